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


@pytest.mark.parametrize("ndim, budget_chunks", [(2, 4), (3, 12)])
def test_chunks_needed_last_go_to_disk_each_at_most_once(monkeypatch, ndim, budget_chunks):
    # 4 chunks of 8 per dim, windows of 4 at step 3: a group of windows (those whose
    # first chunk is the same) touches 2^ndim chunks. A budget of 2^ndim chunks in 2-D,
    # or of two rows of chunks and a group in 3-D, keeps what the next groups need in
    # memory: the chunks of the next row (2-D) or plane (3-D) go to disk, each once
    # (writing out the chunks opened first: up to 2 times in 2-D, 3 in 3-D), and only
    # the margin the windows of the row or plane above reach (at most 3 of 8).
    from xpatch import _accumulate

    dims = ("z", "y", "x")[-ndim:]
    rng = np.random.default_rng(3)
    da = xr.DataArray(rng.random((32,) * ndim, dtype=np.float32), dims=dims)
    kw = dict(**{d: 4 for d in dims}, step=3)
    expected = da.patch.apply(_classes, **kw)
    writes: list[tuple[int, ...]] = []
    shapes: list[tuple[int, ...]] = []
    write = _accumulate.Spill._write

    def counting(self, cpos, buffers, weight_sum):
        writes.append(cpos)
        shapes.extend(b.shape for b in buffers.values())
        return write(self, cpos, buffers, weight_sum)

    monkeypatch.setattr(_accumulate.Spill, "_write", counting)
    monkeypatch.setenv("XPATCH_MEMORY_BUDGET", str(budget_chunks * 3 * 8**ndim * 4))
    result = da.patch.apply(_classes, **kw, chunks=8)
    xr.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)
    assert writes  # the budget is too small for the open chunks
    assert len(writes) == len(set(writes))  # no chunk went to disk twice
    assert all(s[0] == 3 and s[1] <= 3 and s[2:] == (8,) * (ndim - 1) for s in shapes)


def test_windows_added_out_of_order_still_give_the_same_result(monkeypatch):
    # which chunk goes to disk is guessed from the run's order; another order only
    # writes more out
    da = _volume()
    monkeypatch.setenv("XPATCH_MEMORY_BUDGET", str(3 * 3 * 8 * 8 * 8 * 4))
    agg = da.patch.aggregator(
        z=16, y=16, x=16, step=12, chunks=8, output_dims=("cls", "z", "y", "x")
    )
    order = np.random.default_rng(1).permutation(len(agg.grid))
    for i in order:
        window = agg.grid[int(i)]
        agg.add(_classes(da.isel(dict(window))).values, window)
    assert agg._acc.spill.count > 0
    expected = da.patch.apply(_classes, z=16, y=16, x=16, step=12)
    xr.testing.assert_allclose(agg.result(), expected.transpose("cls", ...), rtol=1e-6, atol=1e-6)


def test_a_chunk_blended_in_the_background_goes_to_disk_whole(monkeypatch):
    # 768 x 768 float64 parts are left to the helper threads while func makes the next
    # patch; a chunk going to disk must wait for them (else their sums are lost)
    rng = np.random.default_rng(7)
    da = xr.DataArray(rng.random((1920, 1792)), dims=("y", "x"))
    kw = dict(y=768, x=768, step=384, chunks=1024)
    expected = da.patch.apply(np.sin, **kw)  # chunked, nothing goes to disk (1 GiB budget)
    monkeypatch.setenv("XPATCH_MEMORY_BUDGET", "1")  # every other open chunk goes to disk
    xr.testing.assert_identical(da.patch.apply(np.sin, **kw), expected)
