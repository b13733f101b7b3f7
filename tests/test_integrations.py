"""Optional integrations: progress bars, torch tensors as results, grid plots."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import xarray as xr

import xpatch  # noqa: F401


@pytest.fixture
def image() -> xr.DataArray:
    rng = np.random.default_rng(0)
    return xr.DataArray(
        rng.random((2, 40, 36), dtype=np.float32),
        dims=("band", "y", "x"),
        coords={"y": np.arange(40) * 10.0, "x": np.arange(36) * 10.0},
    )


def test_progress_bar_counts_every_patch(image, capsys):
    out = image.patch.apply(lambda p: p, y=16, x=16, step=8, progress=True)
    err = capsys.readouterr().err
    n = len(image.patch.grid(y=16, x=16, step=8))
    assert f"{n}/{n}" in err
    xr.testing.assert_allclose(out, image)


def test_progress_without_tqdm_names_the_extra(image, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"xpatch\[progress\]"):
        image.patch.apply(lambda p: p, y=16, x=16, progress=True)


def test_torch_tensor_results_are_accepted(image):
    torch = pytest.importorskip("torch")

    def model(patch: xr.DataArray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(patch.values)) * 2

    out = image.patch.apply(model, y=16, x=16, step=8)
    np.testing.assert_allclose(out, image * 2, rtol=1e-6)

    def batched(batch: xr.DataArray) -> torch.Tensor:
        t = torch.from_numpy(np.asarray(batch.values))
        return t.sum(dim=1, keepdim=False)  # (patch, y, x): the band dim is summed away

    out = image.patch.apply(
        batched, y=16, x=16, step=8, batch_size=4, output_dims=("patch", "y", "x")
    )
    np.testing.assert_allclose(out, image.sum("band"), rtol=1e-5)
    assert out.dims == ("y", "x")


def test_aggregator_takes_tensors_requiring_grad(image):
    torch = pytest.importorskip("torch")
    agg = image.patch.aggregator(y=16, x=16, step=8, weights="hann")
    for window, patch in zip(agg.grid, image.patch.sample(y=16, x=16, step=8)):
        t = torch.tensor(patch.values, requires_grad=True)
        agg.add(t * 1.0, window)
    np.testing.assert_allclose(agg.result(), image, rtol=1e-5)


def test_grid_plot_draws_one_rectangle_per_window(image):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    grid = image.patch.grid(y=16, x=16, step=8, border="pad")
    ax = grid.plot(image.isel(band=0))
    assert len(ax.patches) == len(grid)
    assert ax.get_xlim()[0] < 0  # the padding is visible


def test_grid_plot_needs_two_dims(image):
    pytest.importorskip("matplotlib")
    grid = image.patch.grid(y=16)
    with pytest.raises(ValueError, match="2-D grids only"):
        grid.plot()
