"""Results that must never be silently wrong (issue: trust).

Each test here failed before the fix it guards: a result placed by position although
its labels say otherwise, class labels blended position-wise, a func writing into the
user's array, a bare result labelled with the wrong dims, dtype changes accepted
silently, and NaN leaking through a zero weight.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xpatch
from xpatch.errors import ResultError

KW = {"y": 16, "x": 16, "step": 8}


def _labeled(n: int = 48, descending: bool = False) -> xr.DataArray:
    rng = np.random.default_rng(1)
    lat = np.arange(n, dtype=float)[::-1] if descending else np.arange(n, dtype=float)
    return xr.DataArray(
        rng.random((n, n)),
        dims=("y", "x"),
        coords={"y": lat, "x": np.arange(n) * 10.0},
        name="v",
    )


# --- 5. spatial labels of a result ------------------------------------------------
@pytest.mark.parametrize("path", ["eager", "chunks", "dask"])
def test_a_result_in_another_order_is_aligned_by_its_labels(path):
    """A result sorted the other way (descending latitude sorted ascending) or reversed
    is put back by its labels: the output equals the input."""
    da = _labeled(descending=True)
    kw = dict(KW)
    if path == "chunks":
        kw["chunks"] = 24
    src = da.chunk(24) if path == "dask" else da

    def func(p):
        return p.sortby("y").isel(x=slice(None, None, -1))

    out = src.patch.apply(func, **kw)
    xr.testing.assert_allclose(out.compute(), da)


@pytest.mark.parametrize("path", ["eager", "dask"])
def test_a_result_with_other_labels_is_refused_naming_window_dim_and_labels(path):
    da = _labeled()
    src = da.chunk(24) if path == "dask" else da
    calls = []

    def shifted(p):
        calls.append(1)
        return p.assign_coords(x=p.x + 1000)

    with pytest.raises(ResultError, match=r"(?s)Window \d+.*1[0-9]{3}.*'x'"):
        src.patch.apply(shifted, **KW).compute()


def test_a_result_without_spatial_labels_is_placed_by_position():
    da = _labeled()
    out = da.patch.apply(lambda p: p.drop_vars(["x", "y"]) * 2, **KW)
    xr.testing.assert_allclose(out, da * 2)


def test_hand_added_result_with_wrong_labels_is_refused():
    da = _labeled()
    agg = da.patch.aggregator(**KW)
    window = agg.grid[1]
    patch = da.isel(dict(agg.grid[0]))  # the labels of another window
    with pytest.raises(ResultError, match="'x'"):
        agg.add(patch, window)


# --- 6. non-spatial labels ----------------------------------------------------------
def _classes(p, order):
    probs = xr.concat([p * 0 + 1.0, p * 0], dim="cls").assign_coords(cls=["cat", "dog"])
    return probs.sel(cls=order)


@pytest.mark.parametrize("path", ["eager", "chunks", "dask"])
def test_non_spatial_labels_in_another_order_are_aligned(path):
    da = _labeled()
    src = da.chunk(24) if path == "dask" else da
    kw = dict(KW, chunks=24) if path == "chunks" else dict(KW)

    def model(p):
        flip = int(p.x[0]) // 80 % 2 == 1  # every other column answers ["dog", "cat"]
        return _classes(p, ["dog", "cat"] if flip else ["cat", "dog"])

    out = src.patch.apply(model, **kw).compute()
    assert float(out.sel(cls="cat").min()) == pytest.approx(1.0)
    assert float(out.sel(cls="dog").max()) == pytest.approx(0.0)


def test_changed_non_spatial_labels_are_refused():
    da = _labeled()

    def model(p):
        names = ["cat", "dog"] if int(p.x[0]) == 0 else ["cat", "cow"]
        return _classes(p, ["cat", "dog"]).assign_coords(cls=names)

    with pytest.raises(ResultError, match=r"(?s)cow.*'cls'.*cat.*dog"):
        da.patch.apply(model, **KW)


# --- 7. patches are never writable views of the user's array -------------------------
@pytest.mark.parametrize("border", ["squeeze", "pad"])
@pytest.mark.parametrize("batch_size", [None, 3])
def test_func_cannot_write_into_the_source(border, batch_size):
    da = _labeled()
    before = da.copy(deep=True)

    def inplace(p):
        p -= p.mean()
        return p

    kw = dict(KW, border=border, batch_size=batch_size)
    if batch_size is None:
        with pytest.raises(ValueError, match="read-only") as info:
            da.patch.apply(inplace, **kw)
        assert any("Window" in n for n in getattr(info.value, "__notes__", []))
    else:  # a batch is a fresh array: writing to it is harmless
        da.patch.apply(inplace, **kw)
    xr.testing.assert_identical(da, before)


def test_sampled_patches_are_read_only_views():
    da = _labeled()
    for p in da.patch.sample(**KW):
        assert not p.values.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            p.values[0, 0] = 1
    assert da.values.flags.writeable  # the user's array is untouched


# --- 8. a bare result must not take the patch's dims when a length differs -----------
@pytest.mark.parametrize("batch_size", [None, 4])
def test_bare_result_with_another_non_spatial_length_is_refused(batch_size):
    da = xr.DataArray(
        np.random.default_rng(0).random((3, 32, 32)),
        dims=("band", "y", "x"),
        coords={"band": ["r", "g", "b"]},
    )

    def four_classes(p):
        return np.zeros((*p.shape[:-3], 4, *p.shape[-2:]))

    with pytest.raises(ResultError, match=r"(?s)band.*output_dims"):
        da.patch.apply(four_classes, y=16, x=16, batch_size=batch_size)


# --- 9. dtype rules --------------------------------------------------------------------
def test_timedelta_results_are_refused():
    td = xr.DataArray((np.arange(10) * 1e9).astype("timedelta64[ns]"), dims="x")
    with pytest.raises(ResultError, match="timedelta"):
        td.patch.apply(lambda p: p, x=4, step=2)


def test_a_later_result_of_another_dtype_is_refused():
    da = _labeled()

    def mixed(p):
        return p * (1j if int(p.x[0]) > 0 else 1)

    with pytest.raises(ResultError, match="dtype"):
        da.patch.apply(mixed, **KW)


def test_on_chunk_giving_another_dtype_per_chunk_is_refused():
    da = _labeled()

    def post(c):
        return c.astype("int32") if int(c.x[0]) == 0 else c

    with pytest.raises(xpatch.AggregationError, match="dtype"):
        da.patch.apply(lambda p: p, **KW, chunks=24, on_chunk=post)


# --- 10. a zero weight contributes nothing, not even a NaN ----------------------------
def test_zero_custom_weight_hides_nan_where_it_is_zero():
    da = xr.DataArray(np.ones((64, 64)), dims=("y", "x"))
    w = np.ones((16, 16))
    w[:4], w[-4:], w[:, :4], w[:, -4:] = 0, 0, 0, 0

    def nan_rim(p):
        out = p.values.copy()
        out[:4], out[-4:], out[:, :4], out[:, -4:] = np.nan, np.nan, np.nan, np.nan
        return out

    out = da.patch.apply(nan_rim, y=16, x=16, step=8, border="pad", weights=w)
    inner = out.isel(y=slice(4, -4), x=slice(4, -4))
    assert not np.isnan(inner).any()
    np.testing.assert_allclose(inner, 1.0)


# --- results that name what to do -------------------------------------------------------
@pytest.mark.parametrize("kind", [list])  # a tuple or dict is several outputs: test_outputs.py
def test_several_outputs_not_as_a_dataset_say_return_a_dataset(kind):
    da = _labeled()

    def two(p):
        pair = (p.values, p.values * 0)
        return {"a": pair[0], "b": pair[1]} if kind is dict else kind(pair)

    with pytest.raises(ResultError, match="Dataset"):
        da.patch.apply(two, **KW)


def test_channel_last_result_names_the_dim_that_does_not_match():
    da = xr.DataArray(np.random.default_rng(0).random((3, 32, 32)), dims=("band", "y", "x"))
    with pytest.raises(ResultError, match=r"(?s)'band'.*output_dims"):
        da.patch.apply(lambda p: np.moveaxis(p.values, 0, -1), y=16, x=16)


def test_on_chunk_changing_a_non_spatial_length_names_the_chunk():
    da = xr.DataArray(np.random.default_rng(0).random((2, 32, 32)), dims=("band", "y", "x"))

    def post(c):
        return c if int(c.x.size) and c.x.values[0] == 0 else c.isel(band=[0])

    da = da.assign_coords(x=np.arange(32))
    with pytest.raises(xpatch.AggregationError, match=r"(?s)band.*chunk y=0:16, x=16:32"):
        da.patch.apply(lambda p: p, y=16, x=16, chunks=16, on_chunk=post)


def test_dataset_samples_are_writable_copies_never_the_source():
    """A training transform may change a sample in place; the source stays as it was."""
    da = _labeled()
    before = da.copy(deep=True)
    ds = da.patch.dataset(**KW)
    sample, _ = ds[1]
    assert sample.flags.writeable
    sample[...] = -1
    xr.testing.assert_identical(da, before)
