"""A worker's memory limit bounds what the dask path holds on it.

The parts of a group's partial sums that wait for the blocks ahead of them are plain
task results, so a ``distributed`` worker with a ``memory_limit`` spills them to disk
when they pass its target and loads them back when their block runs. Here the target
is made tiny, so every run spills, and the result must still equal the eager one.
How flat a worker's peak then stays as the volume grows is measured in
``benchmarks/dask_volume.py --frontier`` (reported in ``docs/dask-and-distributed.md``).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xpatch  # noqa: F401  (registers the accessor)
from xpatch import parallel

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def spilling_client():
    # the nanny hands this configuration to the worker process: anything held above
    # about 1 MiB goes to disk; the process-level thresholds are off, so the worker
    # never pauses or restarts on the memory its imports take
    spill_early = {
        "distributed.worker.memory.target": 0.001,
        "distributed.worker.memory.spill": False,
        "distributed.worker.memory.pause": False,
        "distributed.worker.memory.terminate": False,
    }
    with (
        dask.config.set(spill_early),
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            memory_limit="1GiB",
            dashboard_address=None,
            silence_logs=50,
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        client.run(lambda: __import__("xpatch"))
        yield client


def _disk_writes(dask_worker) -> float:
    metrics = dask_worker.data.cumulative_metrics.items()
    return sum(v for (label, unit), v in metrics if label == "disk-write" and unit == "count")


def four_classes(patch):
    v = patch.values.astype(np.float32)
    return np.stack([v, 1 - v, v * v, np.sqrt(v)])


def test_parts_spilled_by_the_worker_give_the_eager_result(spilling_client, monkeypatch):
    # parts as tasks of their own, as on large blocks (they are the frontier that waits)
    monkeypatch.setattr(parallel, "THIN_BYTES", 0)
    rng = np.random.default_rng(3)
    image = xr.DataArray(
        rng.random((48, 40, 44), dtype=np.float32),
        dims=("z", "y", "x"),
        coords={"z": np.arange(48) * 2.0},
        name="volume",
    )
    sizes = {"z": 12, "y": 12, "x": 12}
    kwargs = dict(step=8, weights="gaussian", output_dims=("class", "z", "y", "x"))
    eager = image.patch.apply(four_classes, sizes, **kwargs)
    lazy = image.chunk(16).patch.apply(four_classes, sizes, chunks=16, **kwargs)
    before = sum(spilling_client.run(_disk_writes).values())
    with spilling_client.as_current():
        got = lazy.compute()
    spilled = sum(spilling_client.run(_disk_writes).values()) - before
    assert spilled > 0, "the worker spilled nothing: the test does not test spilling"
    xr.testing.assert_allclose(got, eager, rtol=1e-6, atol=1e-6)
    assert got.dims == eager.dims
