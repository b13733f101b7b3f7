"""PatchGrid.plot: windows drawn in the array's coordinates, over one band or an RGB
composite, on the caller's axes (matplotlib, Agg backend)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xpatch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")
from matplotlib.patches import Rectangle  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def scene(ny: int = 40, nx: int = 60) -> xr.DataArray:
    """Four bands on a 10 m grid, north up (y descending), units on the coordinates."""
    rng = np.random.default_rng(0)
    return xr.DataArray(
        rng.random((4, ny, nx), dtype="float32"),
        dims=("band", "y", "x"),
        coords={
            "band": ["blue", "green", "red", "nir"],
            "y": ("y", 5000.0 - 10.0 * (np.arange(ny) + 0.5), {"units": "m"}),
            "x": ("x", 300.0 + 10.0 * (np.arange(nx) + 0.5), {"units": "m"}),
        },
    )


def rectangles(ax) -> list[tuple[float, float, float, float]]:
    """(x0, x1, y_low, y_high) of every rectangle drawn on ``ax``, in data units."""
    out = []
    for p in ax.patches:
        assert isinstance(p, Rectangle)
        x0, y0 = p.get_xy()
        x1, y1 = x0 + p.get_width(), y0 + p.get_height()
        out.append((min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)))
    return out


def test_windows_are_drawn_in_metres_over_the_pixels_they_select() -> None:
    da = scene()
    grid = da.patch.grid(y=16, x=16, step=12)
    ax = grid.plot(da, band="nir")
    drawn = rectangles(ax)
    assert len(drawn) == len(grid)
    for (x0, x1, ylo, yhi), window in zip(drawn, grid):
        patch = da.isel(window)
        # the rectangle spans the patch's pixel centres plus half a pixel each side
        assert x0 == pytest.approx(float(patch.x.min()) - 5)
        assert x1 == pytest.approx(float(patch.x.max()) + 5)
        assert ylo == pytest.approx(float(patch.y.min()) - 5)
        assert yhi == pytest.approx(float(patch.y.max()) + 5)
    # north up: the first row (largest y) on top; the axes show the whole scene
    bottom, top = ax.get_ylim()
    assert (bottom, top) == pytest.approx((4600.0, 5000.0))
    assert ax.get_xlim() == pytest.approx((300.0, 900.0))
    assert ax.get_xlabel() == "x [m]" and ax.get_ylabel() == "y [m]"


def test_one_band_by_name_shows_that_band() -> None:
    da = scene()
    ax = da.patch.grid(y=20, x=20).plot(da, band="red")
    (image,) = ax.get_images()
    np.testing.assert_array_equal(image.get_array(), da.sel(band="red").values)
    left, right, bottom, top = image.get_extent()
    assert (left, right, bottom, top) == pytest.approx((300.0, 900.0, 4600.0, 5000.0))


def test_rgb_composite_from_three_named_bands() -> None:
    da = scene()
    ax = da.patch.grid(y=20, x=20).plot(da, rgb=["red", "green", "blue"])
    (image,) = ax.get_images()
    rgb = np.asarray(image.get_array())
    assert rgb.shape == (40, 60, 3)
    assert rgb.min() >= 0 and rgb.max() <= 1
    # channel order is the one asked for, red first; one stretch for all three
    # channels keeps their ranking and balance
    values = da.sel(band=["red", "green", "blue"]).transpose("y", "x", "band").values
    lo, hi = np.percentile(values, [2, 98])
    np.testing.assert_allclose(rgb, np.clip((values - lo) / (hi - lo), 0, 1), rtol=1e-6)


def test_rgb_true_needs_a_dim_of_three() -> None:
    da = scene()
    three = da.sel(band=["red", "green", "blue"])
    ax = three.patch.grid(y=20, x=20).plot(three, rgb=True)
    assert np.asarray(ax.get_images()[0].get_array()).shape == (40, 60, 3)
    with pytest.raises(xpatch.DimensionError, match="4 entries, not 3"):
        da.patch.grid(y=20, x=20).plot(da, rgb=True)


def test_draws_on_the_axes_given() -> None:
    da = scene()
    _fig, (left, right) = plt.subplots(1, 2)
    grid = da.patch.grid(y=16, x=16, step=12)
    assert grid.plot(da, ax=right, band="nir", edgecolor="white") is right
    assert len(right.patches) == len(grid) and not left.patches
    assert all(p.get_edgecolor()[:3] == (1.0, 1.0, 1.0) for p in right.patches)


def test_microns_with_ascending_coordinates_and_anisotropic_spacing() -> None:
    volume = xr.DataArray(
        np.random.default_rng(1).random((30, 50)),
        dims=("y", "x"),
        coords={
            "y": ("y", 0.5 * np.arange(30), {"units": "um"}),
            "x": ("x", 0.25 * np.arange(50), {"units": "um"}),
        },
    )
    grid = volume.patch.grid(y=10, x=10, step=8)
    ax = grid.plot(volume)
    assert ax.get_xlabel() == "x [um]"
    # ascending y: the first row is on top, so the axis runs downwards
    bottom, top = ax.get_ylim()
    assert bottom == pytest.approx(14.75) and top == pytest.approx(-0.25)
    _x0, x1, _, _ = rectangles(ax)[-1]
    assert x1 == pytest.approx(12.375)  # the last pixel (12.25 um) plus 0.125 um


def test_pad_border_draws_the_virtual_padding_outside_the_image() -> None:
    da = scene(ny=30, nx=30)
    grid = da.patch.grid(y=16, x=16, step=12, border="pad")
    (before, _after) = grid.pad_width["x"]
    assert before > 0
    ax = grid.plot(da, band="nir")
    x0 = min(r[0] for r in rectangles(ax))
    assert x0 == pytest.approx(300.0 - 10.0 * before)  # padding pixels are 10 m too
    assert ax.get_xlim()[0] == pytest.approx(x0)


def test_unlabeled_image_and_no_image_are_drawn_in_index_space() -> None:
    grid = xpatch.PatchGrid({"y": 20, "x": 30}, {"y": 10, "x": 10}, step=10)
    ax = grid.plot(np.zeros((20, 30)))
    assert ax.get_xlim() == pytest.approx((-0.5, 29.5))
    assert grid.plot().get_ylim() == pytest.approx((19.5, -0.5))


def test_bad_input_raises_typed_errors_naming_the_problem() -> None:
    da = scene()
    grid = da.patch.grid(y=20, x=20)
    with pytest.raises(xpatch.DimensionError, match="non-spatial dims \\['band'\\]"):
        grid.plot(da)
    with pytest.raises(xpatch.DimensionError, match="'swir' is not a label of dim 'band'"):
        grid.plot(da, band="swir")
    with pytest.raises(xpatch.DimensionError, match="\\['swir'\\] are not labels"):
        grid.plot(da, rgb=["red", "green", "swir"])
    with pytest.raises(TypeError, match="Dataset"):
        grid.plot(da.to_dataset("band"))
    with pytest.raises(xpatch.GridError, match="length 30, the grid's 40"):
        grid.plot(da.isel(y=slice(0, 30)), band="red")
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        grid.plot(da, ax="left", band="red")
    with pytest.raises(TypeError, match="labeled image"):
        grid.plot(np.zeros((40, 60)), band="red")
    volume = xr.DataArray(np.zeros((4, 8, 8)), dims=("z", "y", "x"))
    with pytest.raises(xpatch.GridError, match="2-D grids only"):
        volume.patch.grid(z=4, y=4, x=4).plot()


def test_windows_a_mask_skips_are_drawn_faint_and_dotted() -> None:
    da = scene()
    land = xr.DataArray(
        np.zeros((40, 60), dtype=bool), dims=("y", "x"), coords={"y": da.y, "x": da.x}
    )
    land[:20, :30] = True  # only the north-west quarter is of interest
    grid = da.patch.grid(y=20, x=20, mask=land)
    assert grid.kept is not None and 0 < grid.n_kept < len(grid)
    ax = grid.plot(da, band="nir", edgecolor="red")
    kept = [p for p in ax.patches if p.get_linestyle() in ("-", "solid")]
    skipped = [p for p in ax.patches if p.get_linestyle() in (":", "dotted")]
    assert len(kept) == grid.n_kept and len(skipped) == len(grid) - grid.n_kept
    assert all(p.get_edgecolor()[:3] == (1.0, 0.0, 0.0) for p in kept)
