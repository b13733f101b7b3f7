"""How results are named, and how xpatch's objects and defaults read.

The rule (docs/design.md, "Names and attrs of results"):

- ``func``'s DataArray result gives the output its name and attrs, as ``func`` left
  them; an unnamed one takes the input's name. A bare array takes the input's name
  and no attrs: the input's attrs (its units) describe the input, not what ``func``
  computed.
- ``on_chunk`` sees the chunk with ``func``'s own labels (not the input's name), and
  its DataArray result's name and attrs are final, an unnamed one stays unnamed. A
  bare ``on_chunk`` result keeps ``func``'s labels.
- The same on every path: eager, chunked, ``out=`` store (also once resumed), dask.
"""

from __future__ import annotations

import inspect
import pickle

import numpy as np
import pytest
import xarray as xr

import xpatch
from xpatch import api

# the string coordinates have no zarr v3 dtype spec yet (zarr's warning)
pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")

KW = dict(y=16, x=16, step=8)
CLASSES = ["water", "land", "cloud"]
OUT_DIMS = ("class", "y", "x")


def image():
    rng = np.random.default_rng(5)
    return xr.DataArray(
        rng.random((2, 40, 48)).astype("float32"),
        dims=("band", "y", "x"),
        coords={"band": ["red", "nir"], "y": np.arange(40.0), "x": np.arange(48.0)},
        name="reflectance",
        attrs={"units": "1", "long_name": "surface reflectance"},
    )


def bare_model(p):
    """A model returning a bare (class, y, x) array of scores."""
    v = np.asarray(p.values)
    return np.stack([v[0], v[1], v[0] * v[1]])


def labeled_model(p):
    """The same scores as an unnamed DataArray without attrs."""
    return xr.DataArray(
        bare_model(p), dims=("class", "y", "x"), coords={"class": CLASSES, "y": p.y, "x": p.x}
    )


def named_model(p):
    return labeled_model(p).rename("probability").assign_attrs(units="1", kind="softmax")


def labels(c):
    return c.argmax("class").astype("uint8")


def run(da, func, path, tmp_path, **kw):
    """``apply`` on one of the paths."""
    kw = {**KW, **kw}
    if func is bare_model:
        kw["output_dims"] = OUT_DIMS
    if path == "eager":
        return da.patch.apply(func, **kw)
    if path == "chunks":
        return da.patch.apply(func, chunks=16, **kw)
    if path == "dask":
        return da.chunk({"y": 16, "x": 16}).patch.apply(func, **kw).compute()
    if path == "dask-out":
        store = tmp_path / "dask.zarr"
        return da.chunk({"y": 16, "x": 16}).patch.apply(func, out=store, **kw).compute()
    store = tmp_path / "out.zarr"
    out = da.patch.apply(func, chunks=16, out=store, **kw).compute()
    if path == "out-resumed":  # a finished store resumed: the name comes from the record
        out = da.patch.apply(func, chunks=16, out=store, resume=True, **kw).compute()
    return out


PATHS = ["eager", "chunks", "out", "out-resumed", "dask", "dask-out"]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("model", [bare_model, labeled_model], ids=["bare", "unnamed"])
def test_on_chunk_labels_are_not_named_after_the_input(tmp_path, path, model):
    out = run(image(), model, path, tmp_path, on_chunk=labels)
    assert out.dims == ("y", "x") and out.dtype == np.uint8
    assert out.name is None
    assert "units" not in out.attrs and "long_name" not in out.attrs


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", PATHS)
def test_on_chunk_of_a_named_result_keeps_that_name(tmp_path, path):
    out = run(image(), named_model, path, tmp_path, on_chunk=labels)
    assert out.name == "probability"  # xarray's argmax keeps the chunk's name
    assert "long_name" not in out.attrs  # the input's attrs never come back


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", PATHS)
def test_on_chunk_names_its_result(tmp_path, path):
    def named_labels(c):
        return labels(c).rename("class_id").assign_attrs(flag_meanings=" ".join(CLASSES))

    out = run(image(), bare_model, path, tmp_path, on_chunk=named_labels)
    assert out.name == "class_id"
    assert out.attrs == {"flag_meanings": "water land cloud"}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", PATHS)
def test_a_bare_result_takes_the_input_name_but_not_its_attrs(tmp_path, path):
    out = run(image(), bare_model, path, tmp_path)
    assert out.name == "reflectance"
    assert out.attrs == {}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", PATHS)
def test_func_labels_are_kept(tmp_path, path):
    named = run(image(), named_model, path, tmp_path)
    assert named.name == "probability"
    assert named.attrs == {"units": "1", "kind": "softmax"}
    unnamed = run(image(), labeled_model, path, tmp_path / "b")
    assert unnamed.name == "reflectance" and unnamed.attrs == {}
    same = run(image(), lambda p: p * 2, path, tmp_path / "c")  # xarray keeps the patch's
    assert same.name == "reflectance" and same.attrs == image().attrs


def test_on_chunk_sees_func_labels_not_the_input_name():
    seen = []

    def look(c):
        seen.append((c.name, dict(c.attrs)))
        return c

    image().patch.apply(bare_model, chunks=16, on_chunk=look, output_dims=OUT_DIMS, **KW)
    assert seen and all(s == (None, {}) for s in seen)
    seen.clear()
    image().patch.apply(named_model, chunks=16, on_chunk=look, **KW)
    assert all(s == ("probability", {"units": "1", "kind": "softmax"}) for s in seen)


def test_a_bare_on_chunk_result_keeps_func_labels():
    out = image().patch.apply(named_model, chunks=16, on_chunk=lambda c: c.values * 2, **KW)
    assert out.name == "probability" and out.attrs == {"units": "1", "kind": "softmax"}
    assert out["class"].values.tolist() == CLASSES


def test_a_hand_written_loop_follows_the_same_rule():
    da = image()
    agg = da.patch.aggregator(chunks=16, on_chunk=labels, **KW)
    for window, patch in zip(agg.grid, da.patch.sample(**KW)):
        agg.add(labeled_model(patch), window)
    out = agg.result()
    assert out.name is None and out.attrs == {}


# --- the sentinel of fill_value ------------------------------------------------------
def test_signatures_show_what_the_fill_value_default_means():
    for func in (api.apply, api.aggregator, xr.DataArray.patch.apply, xpatch.Aggregator):
        param = inspect.signature(func).parameters["fill_value"]
        assert repr(param.default) == "auto"
        assert "fill_value: 'Any' = auto" in str(inspect.signature(func)) or (
            "fill_value=auto" in str(inspect.signature(func))
        )
    # one token (Sphinx splits a signature at commas), and still a singleton
    from xpatch._dtypes import DEFAULT

    assert "," not in repr(DEFAULT) and repr(DEFAULT).isidentifier()
    assert pickle.loads(pickle.dumps(DEFAULT)) is DEFAULT


def test_the_default_fill_value_behaves_as_before():
    da = xr.DataArray(np.ones((10, 10), dtype="float32"), dims=("y", "x"))
    out = da.patch.apply(lambda p: p, y=4, x=4, border="crop")
    assert np.isnan(out.values[8:, :]).all() and (out.values[:8, :8] == 1).all()
    ints = da.patch.apply(lambda p: p, y=4, x=4, border="crop", on_chunk=lambda c: c.fillna(0))
    lab = da.patch.apply(
        lambda p: p, y=4, x=4, border="crop", on_chunk=lambda c: c.fillna(0).astype("int16")
    )
    assert np.isnan(ints.values[8:]).all()
    assert lab.dtype == np.int16 and (lab.values[8:] == 0).all()


# --- the accessor's repr -------------------------------------------------------------
def test_the_accessor_repr_shows_the_object_and_the_methods():
    text = repr(image().patch)
    assert text.startswith("<xpatch.PatchAccessor>")
    assert "DataArray 'reflectance'" in text
    assert "band: 2, y: 40, x: 48" in text
    for method in ("grid", "sample", "dataset", "apply", "aggregator"):
        assert f".{method}(" in text
    assert "help(" in text  # a one-line hint
    assert "in memory" in text and "dask-backed" in repr(image().chunk({"y": 20}).patch)
    ds = xr.Dataset({"a": image(), "flag": ("y", np.zeros(40))})
    text = repr(ds.patch)
    assert "Dataset" in text and "data variables: a, flag" in text
    assert len(text.splitlines()) < 15
