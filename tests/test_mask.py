"""mask=: skip windows by a boolean DataArray (any resolution) or a predicate."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import failing_at

import xpatch  # noqa: F401
from xpatch import api
from xpatch.errors import DimensionError, ResultError

RNG = np.random.default_rng(3)


def slide(ny: int = 120, nx: int = 160) -> xr.DataArray:
    """A microscopy-like slide in microns: tissue in the middle third only."""
    data = RNG.random((ny, nx)).astype("float32") * 0.2
    data[30:80, 50:110] += 0.7  # "tissue"
    return xr.DataArray(
        data,
        dims=("y", "x"),
        coords={"y": 0.5 * np.arange(ny), "x": 0.5 * np.arange(nx)},
        attrs={"units": "a.u."},
    )


def coarse_tissue(da: xr.DataArray, factor: int = 10) -> xr.DataArray:
    """A tissue mask at 1/factor of the resolution, with its own coordinates."""
    coarse = da.coarsen(y=factor, x=factor).mean() > 0.45
    return coarse.rename("tissue")


def covered_by(grid, shape) -> np.ndarray:
    cov = np.zeros(shape, dtype=bool)
    for w in grid.kept_windows():
        cov[tuple(slice(max(s.start, 0), s.stop) for s in w.slices)] = True
    return cov


class Counter:
    def __init__(self):
        self.n = 0

    def __call__(self, p):
        self.n += 1
        return p


def test_a_coarse_mask_skips_most_windows_and_func_never_sees_them():
    da = slide()
    mask = coarse_tissue(da)
    grid = da.patch.grid(y=16, x=16, step=12, mask=mask)
    assert grid.n_kept < 0.35 * len(grid)  # ~70 % of the slide is skipped
    assert "kept by the mask" in repr(grid)
    func = Counter()
    out = da.patch.apply(func, y=16, x=16, step=12, mask=mask)
    assert func.n == grid.n_kept
    cov = covered_by(grid, da.shape)
    np.testing.assert_allclose(out.values[cov], da.values[cov], atol=1e-6)
    assert np.isnan(out.values[~cov]).all()
    assert out.attrs == da.attrs


def test_fill_value_where_no_kept_window_covers():
    da = slide()
    out = da.patch.apply(lambda p: p, y=16, x=16, step=12, mask=coarse_tissue(da), fill_value=-1)
    assert (out.values == -1).sum() > 0.5 * da.size


def test_a_predicate_on_the_patch():
    da = slide()
    func = Counter()
    out = da.patch.apply(func, y=16, x=16, step=12, mask=lambda p: float(p.mean()) > 0.3)
    grid = da.patch.grid(y=16, x=16, step=12)
    kept = [w for w in grid if float(da[w].mean()) > 0.3]
    assert func.n == len(kept) < len(grid)
    cov = np.zeros(da.shape, dtype=bool)
    for w in kept:
        cov[w.slices] = True
    np.testing.assert_allclose(out.values[cov], da.values[cov], atol=1e-6)
    assert np.isnan(out.values[~cov]).all()


@pytest.mark.parametrize("mask_kind", ["array", "predicate"])
def test_chunks_finish_once_each_and_empty_ones_too(mask_kind):
    da = slide()
    mask = coarse_tissue(da) if mask_kind == "array" else (lambda p: float(p.mean()) > 0.3)
    seen = []
    out = da.patch.apply(
        lambda p: p,
        y=16,
        x=16,
        step=12,
        mask=mask,
        chunks=40,
        on_chunk=lambda c: seen.append((float(c.y[0]), float(c.x[0]))) or c,
    )
    assert len(seen) == len(set(seen)) == 3 * 4  # every chunk, exactly once
    whole = da.patch.apply(lambda p: p, y=16, x=16, step=12, mask=mask)
    np.testing.assert_allclose(out.values, whole.values, atol=1e-6)


@pytest.mark.parametrize("thin_tasks", [False, True])
@pytest.mark.parametrize("mask_kind", ["array", "predicate"])
def test_dask_is_lazy_and_equals_eager(mask_kind, thin_tasks, monkeypatch):
    if thin_tasks:  # the strip and part tasks, and the wavefront, of heavy blocks
        from xpatch import parallel

        monkeypatch.setattr(parallel, "THIN_BYTES", 0)
    da = slide()
    mask = coarse_tissue(da) if mask_kind == "array" else (lambda p: float(p.mean()) > 0.3)
    eager = da.patch.apply(lambda p: p * 2, y=16, x=16, step=12, mask=mask)
    # (blocks of 20: the mask skips whole groups, whose neighbours then wait for none)
    lazy = da.chunk(20 if thin_tasks else 40).patch.apply(
        lambda p: p * 2, y=16, x=16, step=12, mask=mask
    )
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.values, eager.values, atol=1e-6)


def test_skipped_windows_produce_no_task():
    da = slide().chunk(20)
    mask = coarse_tissue(slide())
    full = da.patch.apply(lambda p: p, y=16, x=16, step=12)
    masked = da.patch.apply(lambda p: p, y=16, x=16, step=12, mask=mask)

    def groups(result):
        return sum(1 for k in result.data.__dask_graph__() if "xpatch-group" in str(k))

    assert 0 < groups(masked) < groups(full) / 2


def test_out_of_core_with_resume(tmp_path):
    da = slide()
    mask = coarse_tissue(da)
    store = tmp_path / "masked.zarr"
    flaky = failing_at(6, lambda p: p + 1)

    kwargs = dict(y=16, x=16, step=12, mask=mask, chunks=40, out=store)
    with pytest.raises(RuntimeError, match="killed"):
        da.patch.apply(flaky, **kwargs)
    out = da.patch.apply(lambda p: p + 1, resume=True, **kwargs)
    ref = da.patch.apply(lambda p: p + 1, y=16, x=16, step=12, mask=mask)
    np.testing.assert_allclose(out.values, ref.values, atol=1e-6)
    # another mask is another run: resuming it is refused
    with pytest.raises(ValueError):
        da.patch.apply(lambda p: p + 1, resume=True, **{**kwargs, "mask": ~mask})


def test_mask_aligns_by_coordinates_descending_latitude():
    lat = 60.0 - 0.25 * np.arange(40)
    da = xr.DataArray(
        np.ones((40, 48), "float32"), dims=("lat", "lon"),
        coords={"lat": lat, "lon": 0.25 * np.arange(48)},
    )  # fmt: skip
    # a land mask at 1 degree, ascending: land in the north-west only
    land = xr.DataArray(
        np.zeros((10, 12), bool), dims=("lat", "lon"),
        coords={"lat": 50.375 + np.arange(10.0), "lon": 0.375 + np.arange(12.0)},
    )  # fmt: skip
    land[-1, 0] = True  # lat 59.375 (cell 58.875..59.875), lon 0.375 (cell -0.125..0.875)
    grid = da.patch.grid(lat=8, lon=8, mask=land)
    assert [w.index for w in grid.kept_windows()] == [0]


def test_mask_by_position_when_it_has_the_arrays_lengths():
    da = xr.DataArray(np.ones((20, 20)), dims=("y", "x"))
    m = xr.DataArray(np.zeros((20, 20), bool), dims=("y", "x"))
    m[15, 15] = True
    assert [w.index for w in da.patch.grid(y=10, x=10, mask=m).kept_windows()] == [3]


def test_mask_over_one_dim_only_broadcasts():
    da = slide()
    rows = xr.DataArray(da.y.values < 10, dims="y", coords={"y": da.y})
    grid = da.patch.grid(y=20, x=20, mask=rows)
    assert grid.n_kept == grid.shape["x"]


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        (xr.DataArray(np.ones((12, 16)), dims=("y", "x")), DimensionError, "boolean"),
        (xr.DataArray(np.ones((2, 12, 16), bool), dims=("t", "y", "x")), DimensionError, "'t'"),
        (xr.DataArray(np.ones((7, 16), bool), dims=("y", "x")), DimensionError, "along dim 'y'"),
        (np.ones((120, 160), bool), TypeError, "mask must be"),
    ],
)
def test_bad_masks_are_refused_before_func(mask, error, match):
    da = slide().drop_vars(["y", "x"])

    def never(p):
        raise AssertionError("func must not be called")

    with pytest.raises(error, match=match):
        da.patch.apply(never, y=16, x=16, mask=mask)


def test_a_predicate_must_say_yes_or_no():
    with pytest.raises(ResultError, match="must return True"):
        slide().patch.apply(lambda p: p, y=16, x=16, mask=lambda p: p.values)


def test_a_masked_window_cannot_be_added_by_hand():
    da = slide()
    agg = api.aggregator(da, y=16, x=16)
    grid = da.patch.grid(y=16, x=16, mask=coarse_tissue(da))
    skipped = next(w for w in grid if not grid.kept[w.index])
    from xpatch._options import BlendOptions
    from xpatch._plan import BlendPlan
    from xpatch.aggregate import Aggregator
    from xpatch.errors import AggregationError

    agg = Aggregator.from_plan(BlendPlan.make(grid, BlendOptions()), da)
    with pytest.raises(AggregationError, match="skipped by the mask"):
        agg.add(da[skipped].values, skipped)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.booleans(), min_size=36, max_size=36),
    st.sampled_from(["squeeze", "crop", "pad", "adaptive"]),
    st.sampled_from([None, 7, 13]),
    st.sampled_from(["gaussian", "mean", "hann"]),
)
def test_identity_round_trip_over_the_kept_windows(flags, border, chunks, weights):
    da = xr.DataArray(RNG.random((30, 33)).astype("float32"), dims=("y", "x"))
    grid = da.patch.grid(y=8, x=8, step=5, border=border)
    kept = np.resize(np.array(flags), len(grid))
    kept[len(grid) // 2] = True  # (a mask that skips everything is refused: see below)
    g = grid.with_kept(kept)
    mask = xr.DataArray(np.zeros(da.shape, bool), dims=("y", "x"))
    for w in g.kept_windows():  # a pixel mask that keeps exactly these windows' centres
        mask[tuple(slice(max(s.start, 0) + (s.stop - s.start) // 2,
                         max(s.start, 0) + (s.stop - s.start) // 2 + 1)
                   for s in w.slices)] = True  # fmt: skip
    out = da.patch.apply(
        lambda p: p, y=8, x=8, step=5, border=border, chunks=chunks, weights=weights, mask=mask
    )
    gm = da.patch.grid(y=8, x=8, step=5, border=border, mask=mask)
    cov = covered_by(gm, da.shape)
    np.testing.assert_allclose(out.values[cov], da.values[cov], atol=2e-6)
    assert np.isnan(out.values[~cov]).all()


def test_a_mask_that_skips_everything_is_refused():
    from xpatch.errors import GridError

    da = slide()
    nowhere = xr.zeros_like(da, dtype=bool)
    with pytest.raises(GridError, match="nothing to compute"):
        da.patch.apply(lambda p: p, y=16, x=16, mask=nowhere)
