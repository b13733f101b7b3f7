"""Review of issue 18 (halo=, scale=, mask=) and template=: what a user tries.

Every result is compared with a whole-array computation (numpy/scipy), never with
xpatch itself; each defect found in the review has a test here.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

import xpatch
from xpatch import api
from xpatch.errors import GridError, IncompleteError, ResultError, WeightsError

RNG = np.random.default_rng(18)


def raster(ny: int = 64, nx: int = 48, descending: bool = False) -> xr.DataArray:
    """A raster in metres, 10 m cells (north-up if ``descending``)."""
    y = 10.0 * np.arange(ny)
    return xr.DataArray(
        RNG.random((ny, nx)),
        dims=("y", "x"),
        coords={"y": y[::-1] if descending else y, "x": 10.0 * np.arange(nx)},
    )


def blur(p: xr.DataArray) -> xr.DataArray:
    return p.copy(data=ndimage.gaussian_filter(p.values, 2))


def up2(p: xr.DataArray) -> np.ndarray:
    return np.repeat(np.repeat(p.values, 2, -2), 2, -1)


def quarter(p: xr.DataArray) -> np.ndarray:
    v = p.values
    return v.reshape(v.shape[0] // 4, 4, v.shape[1] // 4, 4).mean(axis=(1, 3))


class Counter:
    def __init__(self, func=lambda p: p):
        self.n, self.func = 0, func

    def __call__(self, p):
        self.n += 1
        return self.func(p)


def element_mask(da: xr.DataArray) -> xr.DataArray:
    m = np.zeros(da.shape, dtype=bool)
    m[3, 5] = True
    m[40:43, 30] = True
    return xr.DataArray(m, dims=da.dims)


# --- whole-array references on every path ----------------------------------------


@pytest.mark.parametrize("path", ["eager", "chunks", "batch", "dask", "out"])
@pytest.mark.parametrize("border", ["squeeze", "adaptive", "crop"])
def test_super_resolution_with_halo_and_a_mask_equals_the_whole_array(path, border, tmp_path):
    da = raster(70, 53, descending=True)
    keep = np.zeros((70, 53), dtype=bool)
    keep[10:30, 5:20] = True
    mask = xr.DataArray(keep, dims=("y", "x"))
    whole = np.repeat(np.repeat(ndimage.gaussian_filter(da.values, 2), 2, 0), 2, 1)
    kw: dict = dict(y=16, x=16, step=12, halo=8, border=border, mask=mask, weights="hann")
    obj, func = da, lambda p: up2(blur(p))
    if path == "chunks":
        kw.update(chunks=20, on_chunk=lambda c: c)
    elif path == "batch":
        kw.update(batch_size=3)
        func = lambda b: np.repeat(  # noqa: E731
            np.repeat(ndimage.gaussian_filter(b.values, (0, 2, 2)), 2, 1), 2, 2
        )
    elif path == "dask":
        obj = da.chunk(25)
    elif path == "out":
        kw.update(chunks=32, out=tmp_path / "o.zarr", scale=2)
    out = obj.patch.apply(func, **kw)
    assert out.sizes == {"y": 140, "x": 106}
    assert float(out.y[0] - out.y[1]) == 5.0  # descending, half the spacing
    grid = da.patch.grid(y=16, x=16, step=12, border=border, mask=mask)
    covered = np.zeros((140, 106), dtype=bool)
    for w in grid.kept_windows():
        covered[tuple(slice(2 * s.start, 2 * s.stop) for s in w.slices)] = True
    values = np.asarray(out.values)
    assert np.array_equal(~np.isnan(values), covered)
    np.testing.assert_allclose(values[covered], whole[covered], atol=1e-12)


def test_on_a_distributed_cluster_halo_scale_and_mask_equal_the_whole_array():
    distributed = pytest.importorskip("distributed")
    da = raster(64, 48)
    whole = np.repeat(np.repeat(ndimage.gaussian_filter(da.values, 2), 2, 0), 2, 1)
    coarse = xr.DataArray(
        np.array([[True, False, False], [False, True, False], [False, False, False], [True] * 3]),
        dims=("y", "x"),
        coords={"y": da.y.values.reshape(-1, 16).mean(1), "x": da.x.values.reshape(-1, 16).mean(1)},
    )
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        out = da.chunk(24).patch.apply(
            lambda p: up2(blur(p)), y=16, x=16, step=16, halo=8, mask=coarse
        )
        values = out.compute().values
    keep = np.kron(coarse.values, np.ones((32, 32), dtype=bool))
    assert np.array_equal(~np.isnan(values), keep)
    np.testing.assert_allclose(values[keep], whole[keep], atol=1e-12)


# --- defects found in the review -------------------------------------------------


def test_sample_with_a_mask_yields_only_the_kept_windows():
    da = raster()
    mask = element_mask(da)
    grid = da.patch.grid(y=16, x=16, step=8, mask=mask)
    patches = list(da.patch.sample(y=16, x=16, step=8, mask=mask))
    assert len(patches) == grid.n_kept < len(grid)
    for p, w in zip(patches, grid.kept_windows()):
        np.testing.assert_array_equal(p.values, da.isel(dict(w)).values)


def test_dataset_with_a_mask_is_refused_rather_than_serving_skipped_windows():
    da = raster()
    with pytest.raises(GridError, match="mask"):
        da.patch.dataset(y=16, x=16, step=8, mask=element_mask(da))


def test_grid_mask_as_a_predicate_says_to_give_it_to_apply():
    da = raster()
    with pytest.raises(TypeError, match=r"apply\(.*mask="):
        da.patch.grid(y=16, x=16, mask=lambda p: True)


@pytest.mark.parametrize("scale", [float("inf"), True, float("-inf")])
def test_scale_not_a_finite_number_is_a_grid_error_before_func(scale):
    func = Counter()
    with pytest.raises(GridError, match="scale"):
        raster().patch.apply(func, y=16, x=16, scale=scale)
    assert func.n == 0


def test_quarter_resolution_with_border_crop_on_a_length_not_a_multiple():
    """The docs: sizes and steps multiples of 4, and border='crop' (or a length that
    is a multiple too); border='crop' leaves the tail uncovered anyway."""
    da = raster(66, 50)
    out = da.patch.apply(quarter, y=16, x=16, step=8, border="crop")
    assert out.sizes == {"y": 16, "x": 12}
    want = da.values[:64, :48].reshape(16, 4, 12, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(out.values, want, atol=1e-12)
    np.testing.assert_allclose(out.x.values, 10.0 * np.arange(48).reshape(12, 4).mean(axis=1))
    lazy = da.chunk(33).patch.apply(
        quarter, y=16, x=16, step=8, border="crop", scale=0.25, chunks=32
    )
    np.testing.assert_allclose(lazy.values, want, atol=1e-12)


def test_quarter_resolution_on_a_length_not_a_multiple_otherwise_refused_up_front():
    func = Counter(quarter)
    with pytest.raises(GridError, match=r"'y'.*66"):
        raster(66, 48).patch.apply(func, y=16, x=16, step=8, border="pad", scale=0.25)
    assert func.n == 0


def test_a_predicate_that_returns_none_is_refused():
    with pytest.raises(ResultError, match="None"):
        raster().patch.apply(lambda p: p, y=16, x=16, mask=lambda p: None)


def test_a_predicate_that_skips_every_window_says_so():
    func = Counter()
    with pytest.raises(IncompleteError, match="mask"):
        raster().patch.apply(func, y=16, x=16, mask=lambda p: False)
    assert func.n == 0


def test_weights_array_at_the_output_size_with_the_scale_found_says_to_give_scale():
    da = raster()
    w32 = np.outer(np.hanning(34)[1:-1], np.hanning(34)[1:-1])
    func = Counter(up2)
    for obj in (da, da.chunk(32)):
        with pytest.raises(WeightsError, match="scale="):
            obj.patch.apply(func, y=16, x=16, step=8, weights=w32)
    assert func.n == 0
    # told up front, the output-sized array blends the super-resolved patches
    out = da.patch.apply(up2, y=16, x=16, step=8, weights=w32, scale=2)
    np.testing.assert_allclose(out.values, np.repeat(np.repeat(da.values, 2, 0), 2, 1))


def test_non_monotonic_mask_coordinate_says_what_to_do():
    mask = xr.DataArray(np.ones(4, bool), dims="y", coords={"y": [0.0, 30.0, 20.0, 50.0]})
    with pytest.raises(xpatch.DimensionError, match=r"sortby"):
        raster().patch.apply(lambda p: p, y=16, x=16, mask=mask)


def test_masked_aggregator_hand_loop_with_chunks():
    da = raster()
    mask = element_mask(da)
    agg = api.aggregator(da, y=16, x=16, step=8, weights="mean", chunks=16, mask=mask)
    finished = []
    agg.on_chunk = None
    for w, p in zip(agg.grid.kept_windows(), da.patch.sample(y=16, x=16, step=8, mask=mask)):
        agg.add(p * 2, w)
        finished.append(agg.n_added)
    out = agg.result()
    covered = np.zeros(da.shape, dtype=bool)
    for w in agg.grid.kept_windows():
        covered[w.slices] = True
    assert np.array_equal(~np.isnan(out.values), covered)
    np.testing.assert_allclose(out.values[covered], 2 * da.values[covered])


def test_a_halo_clipped_to_a_misfit_length_is_refused_up_front():
    func = Counter(quarter)
    with pytest.raises(GridError, match=r"halo.*22"):
        raster(66, 48).patch.apply(func, y=16, x=16, step=8, border="crop", halo=4, scale=0.25)
    assert func.n == 0


def test_progress_bar_of_a_run_restarted_at_the_found_scale_is_closed(monkeypatch):
    tqdm_auto = pytest.importorskip("tqdm.auto")
    bars = []

    class Bar:
        def __init__(self, total, **kwargs):
            self.total, self.n, self.closed, self.leave = total, 0, False, True
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm_auto, "tqdm", Bar)
    raster().patch.apply(up2, y=16, x=16, progress=True)
    assert bars and all(b.closed for b in bars)
    shown = [b for b in bars if b.leave]
    assert len(shown) == 1 and shown[0].n == shown[0].total == 12


def test_template_without_the_spatial_dims_is_named_as_the_template():
    func = Counter()
    template = xr.DataArray(np.zeros(3), dims="c")
    with pytest.raises(ResultError, match=r"^template lacks the spatial dims"):
        raster().chunk(32).patch.apply(func, y=16, x=16, template=template)
    assert func.n == 0


def test_template_of_a_super_resolution_model_says_to_give_scale():
    da = raster()
    template = xr.DataArray(np.zeros((32, 32)), dims=("y", "x"))
    lazy = da.chunk(32).patch.apply(up2, y=16, x=16, step=8, template=template)
    with pytest.raises(ResultError, match="scale="):
        lazy.compute()
    out = da.chunk(32).patch.apply(up2, y=16, x=16, step=8, template=template, scale=2)
    np.testing.assert_allclose(out.values, np.repeat(np.repeat(da.values, 2, 0), 2, 1))


@pytest.mark.parametrize("lazy", [False, True])
def test_a_model_that_crops_its_own_halo_is_not_taken_for_half_resolution(lazy):
    """Under border='pad' every widened patch is 16 + 2*8 = 32: a result of 16 (the
    patch proper, the halo cut off by func itself) must not be read as scale 1/2."""
    da = raster()
    obj = da.chunk(32) if lazy else da
    with pytest.raises(ResultError, match="halo") as info:
        out = obj.patch.apply(
            lambda p: p.values[8:-8, 8:-8], y=16, x=16, halo=8, border="pad", weights="mean"
        )
        out.compute()
    assert "scale=" in str(info.value)
    # a model at half resolution with that halo says so, and is blended as such
    out = obj.patch.apply(
        lambda p: p.values.reshape(16, 2, 16, 2).mean(axis=(1, 3)),
        y=16, x=16, halo=8, border="pad", scale=0.5, weights="mean",
    )  # fmt: skip
    assert out.sizes == {"y": 32, "x": 24}
    want = da.values.reshape(32, 2, 24, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(out.values, want, atol=1e-12)


# --- invariants --------------------------------------------------------------------


def _cells(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each coordinate value's cell [lo, hi] (edges halfway to the neighbours)."""
    v = np.sort(values.astype(float))
    d = np.diff(v)
    lo = np.r_[v[0] - d[0] / 2, v[1:] - d / 2]
    hi = np.r_[v[:-1] + d / 2, v[-1] + d[-1] / 2]
    order = np.argsort(np.argsort(values))
    return lo[order], hi[order]


@settings(max_examples=40, deadline=None)
@given(
    st.integers(4, 40).map(lambda n: 2 * n),  # mask spacing (even: integer edges)
    st.integers(-60, 60),  # mask origin
    st.integers(2, 7),  # mask length per dim
    st.booleans(),  # mask descending along y
    st.integers(0, 2**32 - 1),
    st.sampled_from(["squeeze", "crop", "pad"]),
)
def test_kept_windows_are_those_whose_extent_meets_a_true_mask_cell(
    spacing, origin, n, descending, seed, border
):
    rng = np.random.default_rng(seed)
    da = raster(30, 26)  # 10 m cells: edges at multiples of 5
    values = origin + spacing * np.arange(n)
    mask = xr.DataArray(
        rng.random((n, n)) > 0.6,
        dims=("y", "x"),
        coords={"y": values[::-1] if descending else values, "x": values},
    )
    grid = da.patch.grid(y=8, x=6, step=5, border=border, mask=mask)
    mlo = {d: _cells(mask[d].values) for d in ("y", "x")}
    alo = {d: _cells(da[d].values) for d in ("y", "x")}
    want = []
    for w in grid:
        box = {}
        for d in ("y", "x"):
            sl = w[d]
            a, b = max(sl.start, 0), min(sl.stop, da.sizes[d])
            lo, hi = alo[d][0][a:b].min(), alo[d][1][a:b].max()
            # points half a metre apart inside the window's extent (edges are whole)
            points = np.arange(lo + 0.25, hi, 0.5)
            box[d] = np.array([((points > c0) & (points < c1)).any() for c0, c1 in zip(*mlo[d])])
        want.append(bool((mask.values & np.outer(box["y"], box["x"])).any()))
    np.testing.assert_array_equal(grid.kept, np.array(want))


@pytest.mark.parametrize("argument", ["halo", "scale"])
def test_halo_or_scale_along_a_non_spatial_dim_says_it_is_not_spatial(argument):
    da = xr.DataArray(np.zeros((3, 32, 32)), dims=("band", "y", "x"))
    func = Counter()
    with pytest.raises(xpatch.DimensionError, match=r"\['band'\] are not spatial dims"):
        da.patch.apply(func, y=16, x=16, **{argument: {"band": 2}})
    assert func.n == 0


def test_float32_coordinates_of_a_regular_grid_are_rescaled():
    """0.1-degree longitudes stored as float32 (as netCDF files often hold them) are
    regular to their precision: a x2 output is labeled, not refused as irregular."""
    lon = np.float32(100) + np.arange(64, dtype=np.float32) * np.float32(0.1)
    da = xr.DataArray(RNG.random((32, 64)), dims=("lat", "lon"), coords={"lon": lon})
    out = da.patch.apply(up2, lat=16, lon=16)
    np.testing.assert_allclose(np.diff(out.lon.values), 0.05, rtol=1e-4)
    np.testing.assert_allclose(out.lon.values[[0, -1]], [99.975, 106.325], atol=1e-4)
    irregular = da.assign_coords(lon=np.r_[lon[:-1], np.float32(120)])
    with pytest.raises(xpatch.DimensionError, match="'lon' is not regularly spaced"):
        irregular.patch.apply(up2, lat=16, lon=16, scale=2)


def test_a_batched_template_is_refused_while_building():
    func = Counter(lambda b: b * 2)
    da = raster()
    lazy = da.chunk(32)
    template = xr.DataArray(np.zeros((4, 16, 16)), dims=("patch", "y", "x"))
    with pytest.raises(ResultError, match=r"template\.isel\(patch=0\)"):
        lazy.patch.apply(func, y=16, x=16, batch_size=4, template=template)
    one = template.isel(patch=0)
    out = lazy.patch.apply(func, y=16, x=16, step=8, batch_size=4, template=one)
    assert func.n == 0
    np.testing.assert_allclose(out.values, 2 * da.values)


def test_a_mask_cannot_be_aligned_to_unsorted_array_coordinates():
    x = np.arange(64.0)
    np.random.default_rng(1).shuffle(x)
    da = xr.DataArray(np.zeros((8, 64)), dims=("y", "x"), coords={"x": x})
    mask = xr.DataArray([True] + [False] * 7, dims="x", coords={"x": 8.0 * np.arange(8) + 3.5})
    with pytest.raises(xpatch.DimensionError, match=r"sortby\('x'\)"):
        da.patch.grid(y=8, x=16, mask=mask)
    # by position, a mask of the array's length needs no coordinates
    flags = np.zeros(64, dtype=bool)
    flags[20] = True
    kept = da.patch.grid(y=8, x=16, mask=xr.DataArray(flags, dims="x")).kept
    assert kept.tolist() == [False, True, False, False]


def test_a_mask_with_a_nan_coordinate_is_refused():
    mask = xr.DataArray(np.ones(4, bool), dims="y", coords={"y": [0.0, np.nan, 200.0, 300.0]})
    with pytest.raises(xpatch.DimensionError, match="not strictly monotonic"):
        raster().patch.grid(y=16, x=16, mask=mask)


def test_coordinates_that_cannot_be_rescaled_are_named_in_the_fix():
    da = raster().assign_coords(lat=(("y", "x"), np.zeros((64, 48))))
    func = Counter(up2)
    with pytest.raises(xpatch.DimensionError, match=r"obj\.drop_vars\('lat'\)"):
        da.patch.apply(func, y=16, x=16, scale=2)
    assert func.n == 0
