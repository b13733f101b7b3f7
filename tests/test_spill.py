"""Open chunks beyond the memory budget wait on disk (``_accumulate.Spill``)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xpatch


def _volume() -> xr.DataArray:
    rng = np.random.default_rng(5)
    return xr.DataArray(
        rng.random((48, 40, 36), dtype=np.float32),
        dims=("z", "y", "x"),
        coords={"z": np.arange(48), "y": np.arange(40), "x": np.arange(36)},
    )


def _classes(p):
    return xr.concat([p, 1 - p, p * p], dim="cls")


@pytest.mark.parametrize("weights", ["gaussian", "mean", np.ones((16, 16, 16))])
@pytest.mark.parametrize("out", [False, True])
def test_a_small_budget_spills_and_gives_the_same_result(monkeypatch, tmp_path, weights, out):
    da = _volume()
    kw = dict(z=16, y=16, x=16, step=12, chunks=8, weights=weights)
    expected = da.patch.apply(_classes, **kw)
    from xpatch import _accumulate

    made = []
    spill_class = _accumulate.Spill

    class Counting(spill_class):
        def __init__(self, budget):
            super().__init__(budget)
            made.append(self)

    monkeypatch.setattr(_accumulate, "Spill", Counting)
    chunk_bytes = 3 * 8 * 8 * 8 * 4
    monkeypatch.setenv("XPATCH_MEMORY_BUDGET", str(6 * chunk_bytes))
    extra = {"out": tmp_path / "o.zarr"} if out else {}
    result = da.patch.apply(_classes, **kw, **extra)
    xr.testing.assert_allclose(result.load(), expected, rtol=1e-6, atol=1e-6)
    assert made and made[-1].count > 0  # chunks did go to disk
    assert not made[-1].files  # and all came back


def test_open_chunks_in_memory_stay_within_the_budget(monkeypatch):
    da = _volume()
    chunk_bytes = 3 * 8 * 8 * 8 * 4
    monkeypatch.setenv("XPATCH_MEMORY_BUDGET", str(6 * chunk_bytes))
    agg = da.patch.aggregator(
        z=16, y=16, x=16, step=12, chunks=8, output_dims=("cls", "z", "y", "x")
    )
    most = 0
    for window in (agg.grid[int(i)] for i in agg.layout.order()):
        patch = da.isel(dict(window))
        agg.add(_classes(patch).values, window)
        most = max(most, len(agg._acc.buffers))
    assert most <= 6 + 1
    assert agg._acc.spill.count > 0
    expected = da.patch.apply(_classes, z=16, y=16, x=16, step=12)
    xr.testing.assert_allclose(agg.result(), expected.transpose("cls", ...), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("raw, value", [("1000", 1000), ("2KiB", 2048), ("1.5MB", 1_500_000)])
def test_memory_budget_reads_units(monkeypatch, raw, value):
    from xpatch._accumulate import memory_budget

    monkeypatch.setenv("XPATCH_MEMORY_BUDGET", raw)
    assert memory_budget() == value


def test_memory_budget_refuses_nonsense(monkeypatch):
    from xpatch._accumulate import memory_budget

    monkeypatch.setenv("XPATCH_MEMORY_BUDGET", "lots")
    with pytest.raises(ValueError, match="XPATCH_MEMORY_BUDGET"):
        memory_budget()
    assert xpatch.__version__
