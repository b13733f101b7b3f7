"""``apply(out=...)`` on dask-backed input with a real ``distributed.LocalCluster``: the
workers compute and write the blocks, a killed worker changes nothing, and an
interrupted run resumes with the blocks not yet written."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import xarray as xr

import xpatch  # noqa: F401

distributed = pytest.importorskip("distributed")
pytest.importorskip("zarr")

KW = dict(y=24, x=24, step=16, chunks=32)


def _image() -> xr.DataArray:
    rng = np.random.default_rng(2)
    return xr.DataArray(
        rng.random((96, 80), dtype=np.float32),
        dims=("y", "x"),
        coords={"y": np.arange(96), "x": np.arange(80)},
        name="v",
    )


def _slow(p):
    time.sleep(0.02)
    return p * 2 + 1


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=50,
        ) as cluster,
        distributed.Client(cluster) as c,
    ):  # fmt: skip
        c.run(lambda: __import__("xpatch"))
        yield c


def test_workers_write_the_blocks_and_a_killed_worker_changes_nothing(client, tmp_path):
    da = _image()
    expected = da.patch.apply(_slow, **KW)
    calls = []

    def model(p):  # a closure: its calls on the client are counted here
        calls.append(os.getpid())
        return _slow(p)

    pids = list(client.run(os.getpid).values())
    killer = threading.Timer(0.3, os.kill, (pids[0], signal.SIGKILL))
    killer.start()
    out = da.chunk(32).patch.apply(model, **KW, out=tmp_path / "o.zarr")
    killer.join()
    assert len(calls) <= 2  # on the client: the dry call and the fingerprint only
    xr.testing.assert_allclose(out.load(), expected, rtol=1e-6)
    back = xr.open_zarr(tmp_path / "o.zarr")
    xr.testing.assert_allclose(back["v"].load(), expected, rtol=1e-6)
    assert not (tmp_path / "o.zarr.xpatch-done").exists()


def test_an_interrupted_cluster_run_resumes_with_the_blocks_not_written(client, tmp_path):
    da = _image().chunk(32)
    expected = da.compute().patch.apply(_slow, **KW)
    path = tmp_path / "o.zarr"

    marks_dir = str(path) + ".xpatch-done"

    class Failing:
        """Fails the windows of the last block only, once other blocks are written (one
        failing group: the other worker goes on with the rest meanwhile, whichever task
        the scheduler hands out first)."""

        def __call__(self, p):
            if int(p.y[0]) >= 64 and int(p.x[0]) >= 56:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    if os.path.isdir(marks_dir) and os.listdir(marks_dir):
                        break
                    time.sleep(0.05)
                raise RuntimeError("worker lost")
            return _slow(p)

    with pytest.raises(RuntimeError, match="worker lost"):
        da.patch.apply(Failing(), **KW, out=path)
    marks = sorted(os.listdir(str(path) + ".xpatch-done"))
    assert 0 < len(marks) < 9  # some of the 3 x 3 blocks were written before the failure
    # another function object computing the same: the fingerprint recognises it
    out = da.patch.apply(lambda p: _slow(p), **KW, out=path, resume=True)
    xr.testing.assert_allclose(out.load(), expected, rtol=1e-6)
    assert not os.path.exists(str(path) + ".xpatch-done")
