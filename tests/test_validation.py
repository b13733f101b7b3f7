"""Mistakes caught before work, with a message that says what to do (issue 16, item 12).

Every bad argument gives a typed error (a ``ValueError`` subclass from
:mod:`xpatch.errors`, or ``TypeError`` for a wrong type) that names the argument and
the offending value, and is raised before ``func`` is first called. Each test here
failed on the code before its fix: raw Python errors ("'int' object is not
iterable"), foreign keywords read as unknown dims, non-bool flags and float indices
accepted silently, and tuple chunks with non-positive lengths failing only after
``func`` had run.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

import xpatch
from xpatch.errors import DimensionError, GridError, PatchError, WeightsError


class Called(BaseException):
    """Raised by a func that must never run (a BaseException: nothing swallows it)."""


def never(p):
    raise Called("func was called before the bad argument was refused")


def _da(dims=("y", "x"), n=64):
    rng = np.random.default_rng(0)
    shape = tuple(3 if d == "band" else n for d in dims)
    return xr.DataArray(rng.random(shape), dims=dims, name="v")


def _apply(kw, *, dask=False, args=()):
    da = _da()
    src = da.chunk(32) if dask else da
    return src.patch.apply(never, *args, **kw)


SIZE = {"y": 16, "x": 16}


# --- chunks given as blocks per dim ---------------------------------------------------
@pytest.mark.parametrize("dask", [False, True])
@pytest.mark.parametrize(
    "blocks, needle",
    [
        ((-1, 65), "-1"),
        ((0, 64), "0"),
        ((10, 20), "30"),
        ((32.0, 32.0), "32.0"),
        ((32, 16, 16, 0), "0"),
    ],
)
def test_tuple_chunks_with_bad_lengths_are_refused_before_work(blocks, needle, dask):
    with pytest.raises(GridError) as info:
        _apply(dict(SIZE, chunks={"y": blocks}), dask=dask)
    message = str(info.value)
    assert "chunks" in message and "'y'" in message and needle in message
    assert "64" in message  # the dim's length, so the user can fix the sum


def test_tuple_chunks_that_are_fine_still_work():
    da = _da()
    ref = da.patch.apply(lambda p: p * 2, y=16, x=16, step=8, weights="mean")
    for chunks in ({"y": (20, 44)}, {"y": [20, 44]}, {"y": (20, 44), "x": 30}):
        out = da.patch.apply(lambda p: p * 2, y=16, x=16, step=8, weights="mean", chunks=chunks)
        xr.testing.assert_allclose(out, ref)


def test_chunks_as_a_bare_tuple_asks_for_a_mapping():
    with pytest.raises(GridError, match=r"chunks.*\(32, 32\).*chunks=\{'y': 32, 'x': 32\}"):
        _apply(dict(SIZE, chunks=(32, 32)))


def test_irregular_chunks_with_out_are_refused_before_work(tmp_path):
    with pytest.raises(GridError, match=r"chunks.*'y'.*\(20, 44\).*out="):
        _apply(dict(SIZE, chunks={"y": (20, 44)}, out=str(tmp_path / "o.zarr")))
    assert not (tmp_path / "o.zarr").exists()


def test_regular_tuple_chunks_with_out_work(tmp_path):
    da = _da()
    ref = da.patch.apply(lambda p: p + 1, y=16, x=16, weights="mean", chunks=32)
    out = da.patch.apply(
        lambda p: p + 1,
        y=16,
        x=16,
        weights="mean",
        chunks={"y": (32, 32), "x": (32, 32)},
        out=str(tmp_path / "o.zarr"),
    )
    xr.testing.assert_allclose(out.compute(), ref)


# --- size given without dim names ----------------------------------------------------
@pytest.mark.parametrize("size", [16, (128, 128), [16, 16], np.int64(16)])
def test_size_without_dims_says_how_to_give_it(size):
    da = _da(("band", "y", "x"), 256)
    with pytest.raises(GridError) as info:
        da.patch.apply(never, size)
    message = str(info.value)
    assert "size" in message and repr(size) in message
    # names the array's dims and shows the form to use
    assert "('band', 'y', 'x')" in message
    n = int(np.ravel(size)[0])
    assert re.search(rf"y={n}, x={n}", message), message


@pytest.mark.parametrize("method", ["grid", "sample", "dataset", "aggregator"])
def test_size_without_dims_other_methods(method):
    da = _da()
    with pytest.raises(GridError, match=r"y=16, x=16"):
        getattr(da.patch, method)(16)


# --- batch_dim and output_dims ---------------------------------------------------------
@pytest.mark.parametrize("batch_dim", [None, ["patch"], ("a", "b"), {"a": 1}])
@pytest.mark.parametrize("batch_size", [None, 4])
def test_batch_dim_of_the_wrong_type_is_a_type_error(batch_dim, batch_size):
    with pytest.raises(TypeError, match=rf"batch_dim.*{re.escape(repr(batch_dim))}"):
        _apply(dict(SIZE, batch_size=batch_size, batch_dim=batch_dim))


@pytest.mark.parametrize("output_dims", [5, 2.5, None.__class__, object()])
def test_output_dims_not_a_sequence_is_a_type_error(output_dims):
    with pytest.raises(TypeError, match=r"output_dims.*e\.g\. output_dims="):
        _apply(dict(SIZE, output_dims=output_dims))


def test_output_dims_with_a_repeated_dim_is_refused():
    with pytest.raises(DimensionError, match=r"output_dims.*'y'.*twice"):
        _apply(dict(SIZE, output_dims=("y", "y", "x")))


@pytest.mark.parametrize("entry", [None, ["c"], ("c", "d")])
def test_output_dims_with_an_entry_that_is_no_dim_name_is_a_type_error(entry):
    with pytest.raises(TypeError, match=rf"output_dims.*{re.escape(repr(entry))}"):
        _apply(dict(SIZE, output_dims=(entry, "y", "x")))


def test_output_dims_as_one_string_is_one_dim_name():
    """``output_dims="yx"`` is the dim "yx", not ("y", "x") (xarray reads dims="x" so)."""
    with pytest.raises(DimensionError, match=r"output_dims \('yx',\)"):
        _apply(dict(SIZE, output_dims="yx"))
    da = xr.DataArray(np.arange(8.0), dims="x")
    out = da.patch.apply(lambda p: np.asarray(p) * 2, x=4, output_dims="x")
    np.testing.assert_array_equal(out.values, np.arange(8.0) * 2)


# --- custom weights ------------------------------------------------------------------
@pytest.mark.parametrize(
    "weights",
    [
        np.full((16, 16), 1.0, dtype=object),
        np.full((16, 16), "a", dtype=object),
        np.full((16, 16), "a"),
        lambda size: np.full((size["y"], size["x"]), None, dtype=object),
        np.ones((16, 16), dtype=complex),
    ],
    ids=["object-numbers", "object-str", "str", "callable-object", "complex"],
)
def test_weights_of_a_non_real_dtype_are_refused(weights):
    with pytest.raises(WeightsError, match=r"weights.*dtype"):
        _apply(dict(SIZE, weights=weights))


def test_a_weights_callable_that_raises_gets_a_note_naming_the_weights():
    def my_weights(size):
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError, match="boom") as info:
        _apply(dict(SIZE, weights=my_weights))
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "weights" in notes and "my_weights" in notes and "'y': 16" in notes


def test_a_weights_callable_with_the_wrong_shape_names_it_and_the_size():
    def my_weights(size):
        return np.ones((3, 3))

    with pytest.raises(WeightsError) as info:
        _apply(dict(SIZE, weights=my_weights))
    message = str(info.value)
    assert "my_weights" in message and "(3, 3)" in message and "'y': 16" in message


# --- keywords of other libraries -------------------------------------------------------
def test_overlap_is_an_argument_with_monais_rule():  # it was refused before issue 18
    da = _da(n=512)
    assert da.patch.grid(y=256, x=256, overlap=0.25).step == {"y": 192, "x": 192}


def test_overlap_per_dim_and_without_sizes():
    da = _da(n=512)
    with pytest.raises(GridError, match=r"step=\{'y': 128, 'x': 192\}"):
        da.patch.apply(never, y=256, x=256, overlap=(0.5, 0.25))
    with pytest.raises(GridError, match="give the patch size"):
        da.patch.apply(never, overlap=0.5)


@pytest.mark.parametrize(
    "kw, suggestion",
    [
        ({"stride": 8}, "step=8"),
        ({"patch_size": 16}, "y=16, x=16"),
        ({"roi_size": (16, 16)}, "y=16, x=16"),
        ({"mode": "gaussian"}, "weights='gaussian'"),
        ({"mode": "reflect"}, "pad_mode='reflect'"),
        ({"sw_batch_size": 4}, "batch_size=4"),
        ({"padding_mode": "reflect"}, "pad_mode='reflect'"),
        ({"padding_mode": "circular"}, "pad_mode='wrap'"),
        ({"size": 16}, "y=16, x=16"),
        ({"size": {"y": 16, "x": 16}}, "y=16, x=16"),
    ],
)
def test_foreign_keywords_say_what_xpatch_calls_them(kw, suggestion):
    size = {} if set(kw) & {"patch_size", "roi_size", "size"} else SIZE
    with pytest.raises(GridError) as info:
        _apply(dict(size, **kw))
    message = str(info.value)
    (name,) = kw
    assert f"{name}=" in message
    assert "not an xpatch argument" in message or name == "size"  # size is positional
    assert suggestion in message, message


def test_a_dim_named_like_a_foreign_keyword_is_a_dim():
    da = xr.DataArray(np.arange(8.0), dims="stride")
    out = da.patch.apply(lambda p: p, stride=4)
    xr.testing.assert_equal(out, da)


def test_foreign_keywords_in_grid_and_aggregator():
    da = _da()
    with pytest.raises(GridError, match="step=8"):
        da.patch.grid(y=16, x=16, stride=8)
    with pytest.raises(GridError, match="step="):
        da.patch.aggregator(y=16, x=16, scan_interval=8)


# --- flags ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flag, value", [("progress", "yes"), ("resume", "no"), ("overwrite", "x"), ("progress", 1)]
)
def test_flags_must_be_bool(flag, value, tmp_path):
    kw = dict(SIZE, **{flag: value})
    if flag == "resume":
        kw["out"] = str(tmp_path / "o.zarr")
    with pytest.raises(
        TypeError, match=rf"{flag} must be True or False, got {re.escape(repr(value))}"
    ):
        _apply(kw)


def test_aggregator_overwrite_must_be_bool(tmp_path):
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        _da().patch.aggregator(y=16, x=16, out=str(tmp_path / "o.zarr"), overwrite="yes")


def test_numpy_bools_are_bools():
    out = _da().patch.apply(lambda p: p, y=16, x=16, progress=np.False_)
    assert out.shape == (64, 64)


# --- PatchDataset indices ----------------------------------------------------------------
@pytest.mark.parametrize("index", [1.5, 1.0, "1", None, True, np.float64(2)])
def test_dataset_refuses_a_non_integer_index(index):
    ds = _da().patch.dataset(y=16, x=16)
    with pytest.raises(TypeError, match=rf"index.*{re.escape(repr(index))}"):
        ds[index]


def test_dataset_indices_behave_like_a_sequence():
    ds = _da().patch.dataset(y=16, x=16)
    assert ds[-1][1] == len(ds) - 1
    assert ds[np.int64(2)][1] == 2
    assert ds[-len(ds)][1] == 0
    for bad in (len(ds), -len(ds) - 1):
        with pytest.raises(IndexError, match=str(bad)):
            ds[bad]


# --- already checked: tests that they come before work ----------------------------------
def test_fill_value_on_chunk_and_func_are_checked_before_work():
    with pytest.raises(PatchError, match=r"fill_value.*'a'"):
        _apply(dict(SIZE, fill_value="a"))
    with pytest.raises(TypeError, match="on_chunk must be callable, got int"):
        _apply(dict(SIZE, on_chunk=3))
    with pytest.raises(TypeError, match="func must be callable, got int"):
        _da().patch.apply(3, y=16, x=16)
    for dask in (False, True):
        with pytest.raises(TypeError, match="on_chunk"):
            _apply(dict(SIZE, on_chunk="argmax"), dask=dask)


# --- every case: typed, names the argument, before work -----------------------------------
def _cases():
    s = dict(SIZE)
    return [
        ("chunks", dict(s, chunks={"y": (-1, 65)}), ()),
        ("chunks", dict(s, chunks={"y": (10, 20)}), ()),
        ("chunks", dict(s, chunks={"y": (0, 64)}), ()),
        ("chunks", dict(s, chunks=(32, 32)), ()),
        ("size", {}, (16,)),
        ("size", {}, ((128, 128),)),
        ("batch_dim", dict(s, batch_size=2, batch_dim=None), ()),
        ("batch_dim", dict(s, batch_size=2, batch_dim=["p"]), ()),
        ("output_dims", dict(s, output_dims=5), ()),
        ("output_dims", dict(s, output_dims=("y", "y", "x")), ()),
        ("weights", dict(s, weights=np.full((16, 16), None, dtype=object)), ()),
        ("weights", dict(s, weights=lambda size: np.ones((2, 2))), ()),
        ("overlap", dict(s, overlap=1.25), ()),
        ("overlap", dict(s, step=8, overlap=0.5), ()),
        ("units", dict(s, units="metres"), ()),
        ("stride", dict(s, stride=8), ()),
        ("patch_size", {"patch_size": 16}, ()),
        ("progress", dict(s, progress="yes"), ()),
        ("resume", dict(s, resume="no"), ()),
        ("overwrite", dict(s, overwrite="x"), ()),
        ("fill_value", dict(s, fill_value="a"), ()),
        ("on_chunk", dict(s, on_chunk=3), ()),
    ]


@pytest.mark.parametrize("dask", [False, True])
@pytest.mark.parametrize(
    "argument, kw, args", _cases(), ids=[f"{c[0]}-{i}" for i, c in enumerate(_cases())]
)
def test_every_bad_argument_is_typed_named_and_before_work(argument, kw, args, dask):
    with pytest.raises(Exception) as info:
        _apply(kw, dask=dask, args=args)
    error = info.value
    assert isinstance(error, (PatchError, TypeError)), repr(error)
    assert isinstance(error, TypeError) or type(error).__module__ == "xpatch.errors", repr(error)
    assert argument in str(error), str(error)


def test_every_bad_dataset_index_is_typed():
    ds = _da().patch.dataset(y=16, x=16)
    with pytest.raises(TypeError, match="index"):
        ds[1.5]


def test_xpatch_errors_are_value_errors():
    for error in (GridError, WeightsError, DimensionError, PatchError):
        assert issubclass(error, ValueError)
    assert xpatch is not None
