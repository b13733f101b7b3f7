"""Several outputs per call (issue 18, part 4): ``func`` returns a tuple or a dict.

A model returning ``(probabilities, uncertainty)`` from a ``band`` input gives a
Dataset with ``prob(class, y, x)`` and ``unc(y, x)``. The model is pointwise, so the
blended result equals the model run on the whole array (to float32 rounding): that
is the reference on every path (eager, batched, chunks + on_chunk, a zarr store on
disk with resume, dask, a hand-written aggregator loop).
"""

from __future__ import annotations

import collections
import contextlib
import pickle

import dask
import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

import xpatch  # noqa: F401  (registers the accessor)
from xpatch import api
from xpatch._outputs import Outputs
from xpatch.errors import PatchError, ResultError

W = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.3, 0.3, 0.4]], "float32")
CLASSES = ["water", "forest", "field", "town"]
GRID = {"y": 16, "x": 12, "step": 8}


def image(shape=(3, 40, 36), seed=0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    return xr.DataArray(
        rng.random(shape, dtype=np.float32),
        dims=("band", "y", "x"),
        coords={
            "band": ["r", "g", "b"],
            "y": 1000.0 - 10.0 * np.arange(shape[1]),
            "x": 500.0 + 10.0 * np.arange(shape[2]),
        },
        name="scene",
        attrs={"units": "reflectance"},
    )


def bare(p):
    """(probabilities, uncertainty) as bare arrays; a batch keeps its batch dim first."""
    x = np.asarray(p.transpose(..., "band", "y", "x"))
    prob = np.einsum("cb,...byx->...cyx", W, x)
    return prob, x.std(axis=-3)


def labeled(p):
    """(probabilities, uncertainty) as named DataArrays with class labels."""
    w = xr.DataArray(W, dims=("class", "band"), coords={"class": CLASSES})
    prob = xr.dot(w, p, dim="band").transpose(..., "class", "y", "x").rename("prob")
    prob.attrs["long_name"] = "class probabilities"
    return prob, p.std("band").rename("unc")


def reference(da: xr.DataArray) -> xr.Dataset:
    prob, unc = bare(da)
    return xr.Dataset(
        {"prob": (("class", "y", "x"), prob), "unc": (("y", "x"), unc)},
        coords={"y": da.y, "x": da.x},
    )


def assert_matches(out: xr.Dataset, ref: xr.Dataset) -> None:
    assert isinstance(out, xr.Dataset)
    assert set(out.data_vars) == set(ref.data_vars)
    for name in ref.data_vars:
        assert out[name].dims == ref[name].dims, name
        np.testing.assert_allclose(out[name].values, ref[name].values, rtol=2e-6, atol=2e-6)
    for d in ("y", "x"):
        np.testing.assert_array_equal(out[d].values, ref[d].values)


class Calls:
    """A func that counts its calls (patches and batches alike)."""

    def __init__(self, func):
        self.func, self.calls = func, 0

    def __call__(self, p):
        self.calls += 1
        return self.func(p)


@contextlib.contextmanager
def raise_if_dask_computes():
    def refuse(*args, **kwargs):
        raise RuntimeError("dask computed something while the graph was being built")

    with dask.config.set(scheduler=refuse):
        yield


PROB = {"prob": ("class", "y", "x")}


# --- eager: names and dims -------------------------------------------------------------
def test_tuple_of_bare_arrays_with_output_names_and_dims():
    da = image()
    out = da.patch.apply(bare, output_names=("prob", "unc"), output_dims=PROB, **GRID)
    assert_matches(out, reference(da))
    assert out["prob"].dtype == np.float32 and out["unc"].dtype == np.float32
    assert out.sizes["class"] == 4 and "band" not in out.dims


def test_dict_keys_name_the_outputs():
    da = image()
    out = da.patch.apply(lambda p: dict(zip(("prob", "unc"), bare(p))), output_dims=PROB, **GRID)
    assert list(out.data_vars) == ["prob", "unc"]
    assert_matches(out, reference(da))


def test_named_dataarrays_keep_names_coords_and_attrs():
    da = image()
    out = da.patch.apply(labeled, **GRID)
    assert list(out.data_vars) == ["prob", "unc"]
    assert out["class"].values.tolist() == CLASSES
    assert out["prob"].attrs == {"long_name": "class probabilities"}
    assert_matches(out.drop_vars("class"), reference(da))


def test_output_names_rename_named_dataarrays():
    out = image().patch.apply(labeled, output_names=["p", "u"], **GRID)
    assert list(out.data_vars) == ["p", "u"]


def test_named_tuple_fields_name_the_outputs():
    Pair = collections.namedtuple("Pair", "prob unc")
    da = image()
    out = da.patch.apply(lambda p: Pair(*bare(p)), output_dims=PROB, **GRID)
    assert_matches(out, reference(da))


def test_unnamed_outputs_are_numbered():
    out = image().patch.apply(
        lambda p: (p.mean("band").rename(None), np.asarray(p.std("band"))), **GRID
    )
    assert list(out.data_vars) == ["output_0", "output_1"]
    # a DataArray computed from the patch keeps the patch's name
    out = image().patch.apply(lambda p: (p.mean("band"), np.asarray(p.std("band"))), **GRID)
    assert list(out.data_vars) == ["scene", "output_1"]


def test_bare_arrays_inferred_by_their_number_of_dims():
    da = image()
    # 2 dims: the spatial dims; 3 dims with the band length: the patch's dims (band kept)
    out = da.patch.apply(lambda p: (np.asarray(p.std("band")), np.asarray(p) * 2), **GRID)
    assert out["output_0"].dims == ("y", "x")
    assert out["output_1"].dims == ("band", "y", "x")
    assert out["band"].values.tolist() == ["r", "g", "b"]
    np.testing.assert_allclose(out["output_1"], da * 2, rtol=1e-6)


def test_output_dims_sequence_names_bare_outputs_of_its_length():
    da = image()
    out = da.patch.apply(bare, output_dims=("class", "y", "x"), output_names=("a", "b"), **GRID)
    assert out["a"].dims == ("class", "y", "x") and out["b"].dims == ("y", "x")


def test_single_result_is_unchanged():
    da = image()
    out = da.patch.apply(lambda p: p.mean("band"), **GRID)
    assert isinstance(out, xr.DataArray) and out.name == "scene"


def test_each_output_keeps_its_own_dtype_rules():
    def func(p):
        m = p.mean("band")
        return {
            "f64": m.astype("float64"),
            "i": (m * 10).astype("int16"),
            "f16": m.astype("float16"),
        }

    out = image().patch.apply(func, border="crop", y=16, x=16, step=16)
    assert out["f64"].dtype == np.float64
    assert out["i"].dtype == np.float32  # a blend of integers is not an integer
    assert out["f16"].dtype == np.float16
    assert np.isnan(out["f64"].values[:, 32:]).all()  # the crop border's uncovered tail


def test_dataset_input():
    ds = image().to_dataset(name="image").assign(elev=image().isel(band=0) * 100)
    out = ds.patch.apply(lambda p: (p["image"].mean("band"), np.asarray(p["elev"])), **GRID)
    assert out["output_1"].dims == ("y", "x")
    np.testing.assert_allclose(out["output_1"], ds["elev"], rtol=1e-6)


# --- errors ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"output_names": "prob"}, TypeError, "output_names must be a sequence of names"),
        ({"output_names": ("a", "a")}, PatchError, "repeats a"),
        (
            {"output_names": ("a", "b"), "output_dims": {"prob": ("class", "y", "x")}},
            PatchError,
            r"output_dims names the outputs \['prob'\]",
        ),
        ({"output_dims": {"prob": ("class",)}}, PatchError, r"output_dims\['prob'\].*lacks"),
        ({"output_dims": {"prob": 5}}, TypeError, r"output_dims\['prob'\] must be a sequence"),
    ],
)
def test_bad_arguments_are_refused_before_func(kwargs, error, match):
    func = Calls(bare)
    with pytest.raises(error, match=match):
        image().patch.apply(func, **kwargs, **GRID)
    assert func.calls == 0


@pytest.mark.parametrize(
    ("func", "kwargs", "match"),
    [
        (bare, {"output_names": ("prob",)}, r"returned 2 outputs, but output_names names 1"),
        (
            lambda p: (p.mean("band").rename("a"), p.std("band").rename("a")),
            {},
            r"several outputs named 'a'",
        ),
        (
            lambda p: (p.mean("band"), p.std("band")),
            {},
            r"several outputs named 'scene'.*keeps its name.*output_names",
        ),
        (bare, {}, r"output 'output_0' .*length along 'band' is 4.*output_dims=\{'output_0'"),
        (
            lambda p: (np.zeros((2, 2, 16, 12)), p.mean("band")),
            {},
            r"output 'output_0' .*4 dims: .*output_dims=\{'output_0'",
        ),
        (bare, {"output_dims": {"output_0": ("y", "x")}}, r"output_dims\['output_0'\] names 2"),
        (lambda p: {"a": p, "b": p}, {"output_names": ("a", "c")}, "a dict names its own"),
        (lambda p: (p.to_dataset(), p), {}, "output 'output_0' of func is a Dataset"),
        (lambda p: p.mean("band"), {"output_names": ("a",)}, "returned a single DataArray"),
        (lambda p: (), {}, "empty tuple"),
        (lambda p: [p, p], {}, "returned a list: func may return several outputs as a tuple"),
        (bare, {"output_dims": {"pr": ("class", "y", "x")}}, r"names the outputs \['pr'\]"),
    ],
)
def test_bad_outputs_are_refused_at_the_first_result(func, kwargs, match):
    counted = Calls(func)
    with pytest.raises(ResultError, match=match):
        image().patch.apply(counted, **kwargs, **GRID)
    assert counted.calls == 1


@pytest.mark.parametrize("method", ["apply", "aggregator"])
def test_output_names_with_instances_is_refused(method):
    da = image().isel(band=0)
    args = (lambda p: (p > 0.5).astype("int32"),) if method == "apply" else ()
    with pytest.raises(ResultError, match="output_names is not used with merge='instances'"):
        getattr(da.patch, method)(*args, merge="instances", output_names=("a",), **GRID)


def test_outputs_with_different_labels_along_a_shared_dim_are_refused():
    def func(p):
        a = p.mean("band").expand_dims(k=[0, 1]).rename("a")
        return a, a.assign_coords(k=[1, 2]).rename("b")

    with pytest.raises(ResultError, match="outputs sharing a dim must share its labels"):
        image().patch.apply(func, **GRID)


# --- every path ------------------------------------------------------------------------
def test_batched_bare_arrays_carry_the_batch_dim_first():
    da = image()
    func = Calls(bare)
    out = da.patch.apply(func, batch_size=4, output_names=("prob", "unc"), output_dims=PROB, **GRID)
    assert_matches(out, reference(da))
    assert func.calls == -(-len(da.patch.grid(**GRID)) // 4)


def test_batched_output_dims_may_place_the_batch_dim():
    def func(p):
        prob, unc = bare(p)
        return {"prob": np.moveaxis(prob, 0, 1), "unc": unc}  # (class, patch, y, x)

    da = image()
    dims = {"prob": ("class", "patch", "y", "x")}
    out = da.patch.apply(func, batch_size=3, output_dims=dims, **GRID)
    assert_matches(out, reference(da))


def test_batched_named_dataarrays():
    da = image()
    out = da.patch.apply(labeled, batch_size=4, **GRID)
    assert_matches(out.drop_vars("class"), reference(da))


def test_chunks_and_on_chunk_receive_the_dataset():
    da = image((3, 48, 40))
    seen = []

    def on_chunk(c):
        seen.append(c)
        return c.assign(label=c["prob"].argmax("class").astype("uint8"))

    out = da.patch.apply(
        bare, output_names=("prob", "unc"), output_dims=PROB, chunks=16, on_chunk=on_chunk, **GRID
    )
    assert len(seen) == 3 * 3 and all(isinstance(c, xr.Dataset) for c in seen)
    assert set(seen[0].data_vars) == {"prob", "unc"}
    ref = reference(da)
    assert_matches(out.drop_vars("label"), ref)
    np.testing.assert_array_equal(out["label"], ref["prob"].argmax("class"))


def test_halo_with_several_outputs():
    da = image()
    out = da.patch.apply(bare, output_names=("prob", "unc"), output_dims=PROB, halo=4, **GRID)
    assert_matches(out, reference(da))


def test_store_on_disk_writes_every_output_and_resumes(tmp_path):
    da = image((3, 48, 40))
    store = tmp_path / "pred.zarr"
    kw = {"output_names": ("prob", "unc"), "output_dims": PROB, "chunks": 16, **GRID}

    class Interrupted(Exception):
        pass

    def flaky(p):
        flaky.calls += 1
        if flaky.calls > 12:
            raise Interrupted
        return bare(p)

    flaky.calls = 0
    with pytest.raises(Interrupted):
        da.patch.apply(flaky, out=store, **kw)
    part = xr.open_zarr(store, consolidated=False)
    assert set(part.data_vars) == {"prob", "unc"}
    func = Calls(bare)
    out = da.patch.apply(func, out=store, resume=True, **kw)
    n = len(da.patch.grid(**GRID))
    assert 0 < func.calls < n  # finished chunks are not recomputed (+ one fingerprint call)
    ref = reference(da)
    assert_matches(out.compute(), ref)
    back = xr.open_zarr(store)
    assert_matches(back.compute(), ref)
    # the same run uninterrupted writes the same store
    fresh = da.patch.apply(bare, out=tmp_path / "fresh.zarr", **kw)
    xr.testing.assert_allclose(fresh.compute(), out.compute())


def test_dask_input_is_lazy_and_equals_eager():
    da = image((3, 48, 40))
    eager = da.patch.apply(labeled, **GRID)
    func = Calls(labeled)
    with raise_if_dask_computes():
        lazy = da.chunk({"y": 24, "x": 20}).patch.apply(func, **GRID)
    assert func.calls == 1  # the one dry call that tells the layout
    assert isinstance(lazy, xr.Dataset) and lazy["prob"].chunks is not None
    xr.testing.assert_allclose(lazy.compute(), eager)
    batched = da.chunk({"y": 24, "x": 20}).patch.apply(
        bare, batch_size=4, output_names=("prob", "unc"), output_dims=PROB, **GRID
    )
    assert_matches(batched.compute(), reference(da))


def test_a_zarr_array_as_out_takes_one_output_only():
    zarr = pytest.importorskip("zarr")
    from xpatch.store import StoreError

    da = image().isel(band=0)
    arr = zarr.create_array(
        store={}, shape=da.shape, chunks=(20, 18), dtype="f4", dimension_names=("y", "x")
    )
    with pytest.raises(StoreError, match="a zarr array holds one output, not 2"):
        da.patch.apply(lambda p: (p * 2, (p + 1).rename("b")), out=arr, **GRID)


def test_dask_input_into_a_store_on_disk(tmp_path):
    """Dask input with out= a path: the workers write both variables' blocks."""
    da = image((3, 48, 40))
    kw = {"output_names": ("prob", "unc"), "output_dims": PROB, **GRID}
    lazy = da.chunk({"y": 16, "x": 20}).patch.apply(bare, out=tmp_path / "p.zarr", **kw)
    assert_matches(lazy.compute(), reference(da))
    again = da.chunk({"y": 16, "x": 20}).patch.apply(
        bare, out=tmp_path / "p.zarr", resume=True, **kw
    )
    assert_matches(again.compute(), reference(da))


def test_outputs_at_another_resolution():
    def up(p):  # both outputs at twice the resolution
        prob, unc = bare(p)
        return prob.repeat(2, -2).repeat(2, -1), unc.repeat(2, -2).repeat(2, -1)

    da = image()
    out = da.patch.apply(up, output_names=("prob", "unc"), output_dims=PROB, **GRID)
    assert dict(out.sizes) == {"class": 4, "y": 80, "x": 72}
    assert_matches(out.coarsen(y=2, x=2).mean().assign_coords(y=da.y, x=da.x), reference(da))


def test_dask_input_with_a_template_of_several_outputs():
    da = image((3, 48, 40))
    func = Calls(bare)
    template = {"prob": np.zeros((4, 1, 1), "float32"), "unc": np.zeros((1, 1), "float32")}
    with raise_if_dask_computes():
        lazy = da.chunk({"y": 24, "x": 20}).patch.apply(
            func, template=template, output_dims=PROB, output_names=("prob", "unc"), **GRID
        )
    assert func.calls == 0
    assert_matches(lazy.compute(), reference(da))


def test_wrapped_func_pickles_and_keeps_the_users_name():
    wrapped = Outputs(
        bare, ("y", "x"), ("band", "y", "x"), {"band": 3}, names=("prob", "unc"), per_output=PROB
    )
    again = pickle.loads(pickle.dumps(wrapped))
    assert again.__qualname__ == "bare" and again.__module__ == __name__
    out = again(image().isel(y=slice(0, 16), x=slice(0, 12)))
    assert out["unc"].dims == ("y", "x")


def test_distributed_cluster():
    distributed = pytest.importorskip("distributed")
    da = image((3, 48, 40))
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=50,
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):  # fmt: skip
        lazy = da.chunk({"y": 24, "x": 20}).patch.apply(
            bare, output_names=("prob", "unc"), output_dims=PROB, **GRID
        )
        assert_matches(client.compute(lazy).result(), reference(da))


def test_aggregator_add_with_a_dict():
    da = image()
    agg = da.patch.aggregator(output_dims=PROB, **GRID)
    for patch in da.patch.sample(**GRID):
        prob, unc = bare(patch)
        agg.add(
            {
                "prob": prob,
                "unc": xr.DataArray(unc, dims=("y", "x"), coords={"y": patch.y, "x": patch.x}),
            }
        )
    assert_matches(agg.result(), reference(da))


def test_aggregator_add_with_a_tuple_and_output_names():
    da = image()
    agg = da.patch.aggregator(output_names=("prob", "unc"), output_dims=PROB, **GRID)
    for window, patch in zip(agg.grid, da.patch.sample(**GRID)):
        agg.add(bare(patch), window)
    assert_matches(agg.result(), reference(da))


@pytest.mark.parametrize("method", ["apply", "aggregator"])
def test_accessor_equals_function(method):
    da = image()
    kw = {"output_names": ("prob", "unc"), "output_dims": PROB, **GRID}
    if method == "apply":
        xr.testing.assert_identical(da.patch.apply(bare, **kw), api.apply(da, bare, **kw))
        return
    results = []
    for agg in (da.patch.aggregator(**kw), api.aggregator(da, **kw)):
        for window, patch in zip(agg.grid, da.patch.sample(**GRID)):
            agg.add(bare(patch), window)
        results.append(agg.result())
    xr.testing.assert_identical(*results)


@given(st.permutations(["a", "b", "c"]))
def test_dict_order_sets_variable_order_not_values(order):
    da = image((3, 24, 20))
    values = {"a": lambda p: p.mean("band"), "b": lambda p: p.max("band"), "c": lambda p: -p}
    out = da.patch.apply(lambda p: {k: values[k](p) for k in order}, y=8, x=8, step=4)
    assert list(out.data_vars) == list(order)
    xr.testing.assert_allclose(out["c"], -da)
    xr.testing.assert_allclose(out["b"], da.max("band"))
