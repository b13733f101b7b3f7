"""Sizes in coordinate units (``units="coords"``) and ``overlap=`` (issue 18, part 5).

The arithmetic of :mod:`xpatch._units` is tested on numpy arrays; the wiring through
``grid``/``sample``/``dataset``/``apply``/``aggregator`` on DataArrays and Datasets, on
the eager, chunked, dask and ``out=`` paths, each against the same call in elements.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

from xpatch import api
from xpatch._units import convert, overlap_step, spacing
from xpatch.errors import DimensionError, GridError


class Called(BaseException):
    """Raised by a func that must never run (a BaseException: nothing swallows it)."""


def _raster(ny=300, nx=200, res=30.0):
    """A north-up raster in metres: y descends, x ascends, 30 m pixels."""
    rng = np.random.default_rng(0)
    return xr.DataArray(
        rng.random((2, ny, nx)),
        dims=("band", "y", "x"),
        coords={
            "band": ["red", "nir"],
            "y": 4_200_000.0 - res * (np.arange(ny) + 0.5),
            "x": 500_000.0 + res * (np.arange(nx) + 0.5),
        },
        name="reflectance",
    )


def _volume():
    """A 3-D microscopy stack in microns: z 2.0 um, y/x 0.5 um."""
    rng = np.random.default_rng(1)
    return xr.DataArray(
        rng.random((20, 64, 48), dtype=np.float32),
        dims=("z", "y", "x"),
        coords={"z": 2.0 * np.arange(20), "y": 0.5 * np.arange(64), "x": 10 + 0.5 * np.arange(48)},
    )


# --- the arithmetic, on numpy arrays -----------------------------------------------------
def test_spacing_ascending_descending_and_integer():
    assert spacing(np.arange(10) * 0.5, "x") == 0.5
    assert spacing(90.0 - 0.25 * np.arange(721), "lat") == 0.25  # descending: absolute
    assert spacing(np.arange(0, 100, 10), "x") == 10.0  # integer coordinate


def test_float32_coordinates_at_projected_magnitudes_are_regular():
    # 10 m pixel centres near x = 5e5 stored as float32: steps of 10 +- 1/32 as stored
    x = (500_000.1 + 10.0 * np.arange(4096)).astype(np.float32)
    assert np.ptp(np.diff(x.astype(np.float64))) > 0.01  # really uneven as stored
    assert spacing(x, "x") == pytest.approx(10.0, rel=1e-5)


@pytest.mark.parametrize(
    "values, pattern",
    [
        (
            np.array([0.0, 1.0, 2.0, 4.0]),
            r"dim 'x' is not regularly spaced \(steps from 1\.0 to 2\.0\)",
        ),
        (np.array([0.0, 1.0, 1.0, 2.0]), "dim 'x' is not monotonic"),
        (np.array([0.0, 1.0, 0.0]), "dim 'x' is not monotonic"),
        (np.array([3.0]), "has 1 value"),
        (np.array(["a", "b"]), "not numbers"),
        (np.array([0.0, np.nan, 2.0]), "NaN"),
        (None, "dim 'x' has no coordinate"),
    ],
)
def test_spacing_refuses_what_has_none(values, pattern):
    with pytest.raises(GridError, match=pattern):
        spacing(values, "x")


def test_a_size_that_is_not_whole_names_the_whole_ones():
    with pytest.raises(GridError) as info:
        convert({"y": 30.0}, size={"y": 100.0})
    message = str(info.value)
    assert "size y=100.0 is 3.33 elements of spacing 30.0; 90.0 or 120.0 would be whole" in message
    with pytest.raises(GridError, match=r"step x=10\.0 is 0\.333 elements of spacing 30\.0; 30\.0"):
        convert({"x": 30.0}, size={"x": 90}, step=10.0)
    with pytest.raises(GridError, match=r"halo x=10\.0 .* 0\.0 or 30\.0 would be whole"):
        convert({"x": 30.0}, halo=10.0)


def test_convert_each_argument_per_dim():
    c = convert(
        {"y": 30.0, "x": 10.0},
        size={"y": 3840, "x": 1280.0},
        step={"y": 1920},
        halo=60,
        chunks={"y": (3000.0, 6000.0), "x": 2560},
    )
    assert c.size == {"y": 128, "x": 128}
    assert c.step == {"y": 64}
    assert c.halo == {"y": 2, "x": 6}
    assert c.chunks == {"y": (100, 200), "x": 256}
    assert convert({"y": 30.0}, halo=0).halo == {"y": 0}


def test_convert_refuses_non_numbers_and_non_positive_values():
    with pytest.raises(TypeError, match=r"size for dim 'y' with units='coords' must be a number"):
        convert({"y": 30.0}, size={"y": "3840m"})
    with pytest.raises(GridError, match=r"size y=0 must be positive"):
        convert({"y": 30.0}, size={"y": 0})
    with pytest.raises(GridError, match=r"halo y=-30\.0 must be >= 0"):
        convert({"y": 30.0}, halo=-30.0)
    with pytest.raises(GridError, match=r"chunks y=inf must be positive"):
        convert({"y": 30.0}, chunks=math.inf)


@given(
    res=st.floats(1e-4, 1e4),
    origin=st.floats(-1e6, 1e6),
    n=st.integers(1, 500),
    descending=st.booleans(),
)
def test_a_whole_number_of_spacings_converts_to_that_number(res, origin, n, descending):
    coords = origin + (-res if descending else res) * np.arange(n + 3)
    s = spacing(coords, "x")
    assert convert({"x": s}, size={"x": n * res}).size == {"x": n}


@given(size=st.integers(1, 2000), overlap=st.floats(0, 1, exclude_max=True))
def test_overlap_is_monais_rule(size, overlap):
    assert overlap_step(overlap, {"x": size}) == {"x": max(int(size * (1 - overlap)), 1)}


def test_overlap_per_dim_and_refusals():
    assert overlap_step({"y": 0.5}, {"y": 256, "x": 100}) == {"y": 128}  # x: step = size
    with pytest.raises(GridError, match="give step or overlap, not both"):
        overlap_step(0.5, {"y": 256}, step=64)
    with pytest.raises(GridError, match=r"overlap for dim 'y' must be in \[0, 1\)"):
        overlap_step(1.0, {"y": 256})
    with pytest.raises(TypeError, match="overlap for dim 'y' must be a number"):
        overlap_step("half", {"y": 256})
    with pytest.raises(GridError, match=r"overlap=\{'y': 0\.5, 'x': 0\.25\}.*step=\{'y': 128"):
        overlap_step((0.5, 0.25), {"y": 256, "x": 256})
    with pytest.raises(DimensionError, match="overlap"):
        overlap_step({"z": 0.5}, {"y": 256})


# --- the grid, on labeled arrays ---------------------------------------------------------
def test_metres_30m_pixels():
    da = _raster()
    g = da.patch.grid(y=3840, x=3840.0, step=1920, units="coords")
    assert g == da.patch.grid(y=128, x=128, step=64)
    assert g.size == {"y": 128, "x": 128} and g.step == {"y": 64, "x": 64}


def test_microns_anisotropic():
    vol = _volume()
    g = vol.patch.grid(z=16.0, y=16.0, x=8.0, step={"z": 8.0}, units="coords")
    assert g.size == {"z": 8, "y": 32, "x": 16}
    assert g.step == {"z": 4, "y": 32, "x": 16}


def test_descending_latitude():
    lat = 90.0 - 0.25 * np.arange(181)
    lon = -180.0 + 0.25 * np.arange(360)
    da = xr.DataArray(np.zeros((181, 360)), dims=("lat", "lon"), coords={"lat": lat, "lon": lon})
    g = da.patch.grid(lat=10.0, lon=20.0, step=5.0, units="coords")
    assert g.size == {"lat": 40, "lon": 80} and g.step == {"lat": 20, "lon": 20}
    first = next(da.patch.sample(lat=10.0, lon=20.0, step=5.0, units="coords"))
    assert float(first.lat[0] - first.lat[-1]) == pytest.approx(10.0 - 0.25)


def test_irregular_coordinate_refused_with_the_range():
    da = _raster(ny=40, nx=30)
    da = da.assign_coords(x=np.cumsum(np.r_[0.0, np.full(14, 30.0), np.full(15, 31.0)]))
    with pytest.raises(GridError) as info:
        da.patch.grid(y=300, x=300, units="coords")
    message = str(info.value)
    assert "dim 'x'" in message and "steps from 30.0 to 31.0" in message
    assert "units='index'" in message


def test_missing_coordinate_refused():
    da = xr.DataArray(np.zeros((40, 30)), dims=("y", "x"), coords={"y": np.arange(40) * 30.0})
    with pytest.raises(GridError, match=r"dim 'x' has no coordinate.*assign_coords\(x="):
        da.patch.grid(y=300, x=300, units="coords")
    assert da.patch.grid(y=300, units="coords").size == {"y": 10}  # only the dims used


def test_non_whole_size_refused_with_the_suggestion():
    with pytest.raises(GridError, match=re.escape("90.0 or 120.0 would be whole")):
        _raster().patch.grid(y=100.0, x=3840, units="coords")


def test_unknown_units_refused():
    with pytest.raises(GridError, match=r"units must be one of \('index', 'coords'\), got 'm'"):
        _raster().patch.grid(y=3840, x=3840, units="m")


def test_index_units_still_take_elements_only():
    with pytest.raises(GridError, match=r"size for dim 'y' must be a positive int, got 3840\.0"):
        _raster().patch.grid(y=3840.0, x=128)


def monai_starts(length, size, overlap):
    """Window starts along one axis as monai.inferers.utils computes them
    (``_get_scan_interval`` and ``dense_patch_slices``)."""
    interval = size if size == length else max(int(size * (1 - overlap)), 1)
    count = math.ceil(length / interval)
    last = next((i for i in range(count) if i * interval + size >= length), None)
    n = 1 if last is None else last + 1
    return [i * interval - max(i * interval + size - length, 0) for i in range(n)]


@given(
    length=st.integers(1, 400),
    data=st.data(),
    overlap=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]) | st.floats(0, 0.999),
)
def test_overlap_with_the_edge_border_places_monais_windows(length, data, overlap):
    size = data.draw(st.integers(1, length))
    da = xr.DataArray(np.zeros(length), dims="x")
    g = da.patch.grid(x=size, overlap=overlap, border="edge")
    assert g.starts["x"].tolist() == monai_starts(length, size, overlap)


@pytest.mark.parametrize("border", ["edge", "squeeze"])
def test_overlap_gives_monais_grid(border):
    da = _raster()
    g = da.patch.grid(y=128, x=96, overlap=0.25, border=border)
    assert g.step == {"y": int(128 * (1 - 0.25)), "x": int(96 * (1 - 0.25))}
    assert g == da.patch.grid(y=128, x=96, step={"y": 96, "x": 72}, border=border)
    if border == "edge":  # MONAI places its windows as the edge border does
        assert g.starts["y"].tolist() == monai_starts(300, 128, 0.25)
        assert g.starts["x"].tolist() == monai_starts(200, 96, 0.25)


def test_overlap_in_metres_and_per_dim():
    da = _raster()
    g = da.patch.grid(y=3840, x=1920, units="coords", overlap={"y": 0.5})
    assert g.step == {"y": 64, "x": 64}


def test_step_and_overlap_together_refused():
    with pytest.raises(GridError, match="give step or overlap, not both"):
        _raster().patch.grid(y=128, x=128, step=64, overlap=0.5)


def test_dataset_input_and_mask():
    ds = _raster().to_dataset(name="image")
    ds["valid"] = ds.image.isel(band=0) > 0.05
    mask = ds.valid.coarsen(y=10, x=10, boundary="trim").any()
    g = ds.patch.grid(y=3840, x=3840, step=1920, units="coords", mask=mask)
    assert g == ds.patch.grid(y=128, x=128, step=64, mask=mask)


# --- apply, aggregator, sample, dataset ------------------------------------------------
def _smooth(p):
    return p.mean("band").rolling(y=3, x=3, center=True, min_periods=1).mean()


def _smooth_and_extent(p):
    """A local filter plus the extent func saw (the patch and its halo), in elements."""
    return _smooth(p) + 1000 * p.sizes["y"] + p.sizes["x"]


@pytest.mark.parametrize("path", ["eager", "chunks", "dask"])
def test_apply_in_metres_equals_apply_in_elements(path):
    da = _raster(ny=160, nx=160)
    kw_m = dict(y=1920, x=1920, step=960, halo=60, units="coords", weights="hann")
    kw_e = dict(y=64, x=64, step=32, halo=2, weights="hann")
    if path == "chunks":
        kw_m["chunks"] = {"y": 2400, "x": (1200.0, 3600.0)}
        kw_e["chunks"] = {"y": 80, "x": (40, 120)}
    src = da.chunk({"y": 80, "x": 60}) if path == "dask" else da
    out_m = src.patch.apply(_smooth_and_extent, **kw_m).compute()
    out_e = src.patch.apply(_smooth_and_extent, **kw_e).compute()
    xr.testing.assert_identical(out_m, out_e)
    middle = {"y": slice(64, 96), "x": slice(64, 96)}  # covered by windows away from the border
    seen = (out_e - _smooth(da)).isel(middle)
    np.testing.assert_allclose(seen, 1000 * 68 + 68)  # 64 + 2 * halo 2, not 64 + 2 * 60


def test_apply_to_zarr_in_microns(tmp_path):
    pytest.importorskip("zarr")
    vol = _volume()
    kw_u = dict(z=16.0, y=16.0, x=16.0, overlap=0.5, units="coords", chunks={"z": 20.0, "y": 16.0})
    kw_e = dict(z=8, y=32, x=32, step={"z": 4, "y": 16, "x": 16}, chunks={"z": 10, "y": 32})
    out_u = vol.patch.apply(lambda p: p * 2, **kw_u, out=tmp_path / "u.zarr")
    out_e = vol.patch.apply(lambda p: p * 2, **kw_e, out=tmp_path / "e.zarr")
    xr.testing.assert_identical(out_u.compute(), out_e.compute())
    np.testing.assert_allclose(out_u, vol * 2, rtol=1e-6)


def test_aggregator_sample_dataset_in_metres():
    da = _raster(ny=96, nx=64)
    kw = dict(y=960, x=960, units="coords", overlap=0.5)
    agg = da.patch.aggregator(**kw, chunks=1440.0, weights="mean")
    assert agg.grid == da.patch.grid(y=32, x=32, step=16)
    for patch in da.patch.sample(**kw):
        agg.add(patch.mean("band"))
    xr.testing.assert_allclose(agg.result(), da.mean("band"))
    pd = da.patch.dataset(**kw)
    assert len(pd) == len(agg.grid) and pd[0][0].shape == (2, 32, 32)


BAD = [
    (dict(y=100.0, x=3840), GridError, "90.0 or 120.0 would be whole"),
    (dict(y=3840, x=3840, step=100.0), GridError, "step y=100.0"),
    (dict(y=3840, x=3840, halo=45), GridError, "halo y=45"),
    (dict(y=3840, x=3840, chunks=1000), GridError, "chunks y=1000"),
    (dict(y=3840, x=3840, chunks={"x": (3000.0, 1500.0)}), GridError, "block lengths"),
    (dict(y=3840, x=3840, step=1920, overlap=0.5), GridError, "not both"),
    (dict(y=3840, x=3840, overlap=1.5), GridError, "overlap for dim 'y'"),
    (dict(y=3840, x=3840, units="pixels"), GridError, "units must be"),
    (dict(y="3840 m", x=3840), TypeError, "size for dim 'y' with units='coords'"),
]


@pytest.mark.parametrize("dask", [False, True])
@pytest.mark.parametrize("kw, error, pattern", BAD)
def test_errors_come_before_func_is_called(kw, error, pattern, dask):
    calls = []

    def func(p):
        calls.append(p)
        return p

    da = _raster(ny=200, nx=200)
    src = da.chunk(100) if dask else da
    kw = {"units": "coords", **kw}
    with pytest.raises(error, match=re.escape(pattern)):
        src.patch.apply(func, **kw)
    assert calls == []
    irregular = src.assign_coords(x=np.r_[0.0, np.cumsum(np.linspace(29, 31, 199))])
    with pytest.raises(GridError, match="dim 'x' is not regularly spaced"):
        irregular.patch.apply(func, y=3840, x=3840, units="coords")
    assert calls == []


@pytest.mark.parametrize("method", ["grid", "sample", "dataset", "apply", "aggregator"])
def test_accessor_equals_function(method):
    da = _raster(ny=64, nx=64)
    kw = dict(y=960, x=960, units="coords", overlap=0.5)
    args = (_smooth,) if method == "apply" else ()
    if method in ("apply", "aggregator"):
        kw["chunks"] = 960.0
    a = getattr(da.patch, method)(*args, **kw)
    b = getattr(api, method)(da, *args, **kw)
    if method == "sample":
        for pa, pb in zip(a, b, strict=True):
            xr.testing.assert_identical(pa, pb)
    elif method == "dataset":
        assert len(a) == len(b)
        np.testing.assert_array_equal(a[3][0], b[3][0])
    elif method == "aggregator":
        assert a.grid == b.grid and a.layout.shape == b.layout.shape
    elif method == "apply":
        xr.testing.assert_identical(a, b)
    else:
        assert a == b
