"""``out=`` never loses data (issue 16, items 1-4 and the store part of 11).

Each test here failed on the code before the fix it guards:

1. an ``out=`` path that holds anything (other files, a zarr store, the input's own
   store) is refused before ``func`` is first called, unless ``overwrite=True`` or
   ``resume=True`` says otherwise; the input's store is refused even then; impossible
   paths, int dim names and a MultiIndex are refused before ``func`` too;
2. a second process writing the same store is refused (a lock file beside the store,
   taken over when its process is gone);
3. a run SIGKILLed at any point of the store's creation leaves a store that
   ``resume=True`` continues or starts afresh, and the result is exact;
4. resume recognises ``func`` by what it computes (a fingerprint of one window's
   result), not by its name.

Everything runs for real: zarr stores in ``tmp_path``, subprocesses killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import xarray as xr

from xpatch.store import StoreError, read_record

zarr = pytest.importorskip("zarr")

pytestmark = [
    pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated"),
    pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning"),
    pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part"),
]

KW = dict(y=10, x=10, step=5, chunks=20)  # 40 x 50: 2 x 3 chunks, 63 windows


def image(seed=0, name="img"):
    rng = np.random.default_rng(seed)
    return xr.DataArray(
        rng.random((40, 50)).astype("float32"),
        dims=("y", "x"),
        coords={"y": np.arange(40) * 0.5 + 3, "x": np.arange(50) * 2.0},
        name=name,
    )


def double(p):
    return p * 2


def triple(p):
    return p * 3


class Counter:
    def __init__(self, func):
        self.func, self.calls = func, 0

    def __call__(self, p):
        self.calls += 1
        return self.func(p)


def lock_file(path):
    path = os.path.abspath(os.fspath(path))
    return path + ".xpatch-lock"


def read_lock(path):
    with open(lock_file(path)) as f:
        return json.load(f)


def read_done(path):
    record = read_record(zarr.open_group(os.fspath(path), mode="r").attrs["xpatch"])
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(record["done"]), dtype=np.uint8))
    return bits[: int(np.prod(record["chunk_grid"]))].astype(bool)


def stored(path):
    return xr.open_dataarray(path, engine="zarr", consolidated=False).load()


# --- a runner in another process ------------------------------------------------------
RUNNER = """
import json, os, shutil, signal, sys, time
import dask
import numpy as np, xarray as xr
import xpatch

dask.config.set(scheduler="synchronous")  # no thread pool: children are forked below

cfg = json.loads(sys.argv[1])
da = xr.open_dataarray(cfg["data"]).load()
calls = 0


def die():
    os.kill(os.getpid(), signal.SIGKILL)


class Scale:
    def __init__(self, w):
        self.w = w

    def __call__(self, p):
        return p * self.w


base = Scale(cfg.get("w", 2.0))


def func(p):
    global calls
    calls += 1
    if calls == cfg.get("kill_at_call"):
        die()
    if calls == cfg.get("wait_at_call"):
        open(cfg["started"], "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(cfg["go"]) and time.monotonic() < deadline:
            time.sleep(0.01)
    return base(p)


def run(out, **extra):
    kw = dict(cfg["kw"])
    kw.update(extra)
    da.patch.apply(func, out=out, **kw).load()


def hooked(kill_at, log):
    # SIGKILL this process just before its kill_at-th write or delete on disk
    import zarr.storage

    ops = []

    def op(what):
        ops.append(what)
        if log is not None:
            with open(log, "w") as f:
                json.dump(ops, f)
        if len(ops) == kill_at:
            die()

    store_set = zarr.storage.LocalStore.set

    async def set_(self, key, value, *a, **k):
        op("set " + key)
        return await store_set(self, key, value, *a, **k)

    zarr.storage.LocalStore.set = set_
    for name in ("unlink", "rmdir"):
        real = getattr(os, name)

        def wrapped(*a, _real=real, _name=name, **k):
            op(_name + " " + str(a[0]))
            return _real(*a, **k)

        setattr(os, name, wrapped)


if "kill_points" in cfg:
    # one forked child per kill point: each dies at its point of the store's creation
    spec = cfg["kill_points"]
    log = cfg["out"] + ".ops.json"
    run(cfg["out"] + ".warm")  # the first run imports and warms up: not in every child
    outcomes = {}
    points = [None] + list(range(1, spec["max"] + 1))
    for n in points:
        out = cfg["out"] + (".dry" if n is None else f".{n}")
        if spec.get("template"):
            shutil.copytree(spec["template"], out)
        pid = os.fork()
        if pid == 0:
            try:
                hooked(n, log if n is None else None)
                run(out, overwrite=spec.get("overwrite", False))
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        outcomes[str(n)] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        if n is None:  # the dry run: stop after the first data chunk is written
            with open(log) as f:
                ops = json.load(f)
            first = next(i for i, o in enumerate(ops, 1) if o.startswith("set img/c/"))
            points[:] = [None] + list(range(1, min(first + 2, spec["max"]) + 1))
    print(json.dumps(outcomes))
    sys.exit(0)

outcomes = []
for flags in cfg.get("attempts", [{}]):
    try:
        run(cfg["out"], **flags)
        outcomes.append({"ok": True, "calls": calls})
    except Exception as err:
        outcomes.append({"error": type(err).__name__, "message": str(err)})
print(json.dumps(outcomes))
sys.exit(0 if all("ok" in o for o in outcomes) else 3)
"""


@pytest.fixture
def runner(tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(textwrap.dedent(RUNNER))
    data = tmp_path / "input.nc"
    image().to_netcdf(data)

    def launch(**cfg):
        cfg.setdefault("data", str(data))
        cfg.setdefault("kw", KW)
        cfg["out"] = os.fspath(cfg["out"])
        args = [sys.executable, str(script), json.dumps(cfg)]
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    return launch


def finish(proc, timeout=60):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def killed_halfway(runner, path, kill_at_call=40, **cfg):
    """A run SIGKILLed at its 40th call of 63 (some chunks finished, some not)."""
    proc = runner(out=path, kill_at_call=kill_at_call, **cfg)
    code, _, err = finish(proc)
    assert code == -signal.SIGKILL, err
    done = read_done(path)
    assert 0 < done.sum() < done.size
    return proc.pid


# --- 1. an existing out= is refused, never deleted --------------------------------------
def test_a_directory_with_other_files_is_refused(tmp_path):
    da = image()
    path = tmp_path / "results"
    path.mkdir()
    (path / "notes.txt").write_text("a week of work")
    for flags in ({}, {"resume": True}):
        func = Counter(double)
        with pytest.raises(StoreError) as info:
            da.patch.apply(func, out=path, **flags, **KW)
        message = str(info.value)
        assert str(path) in message and "notes.txt" in message
        assert "overwrite=True" in message
        assert func.calls == 0
        assert isinstance(info.value, ValueError)
    assert (path / "notes.txt").read_text() == "a week of work"
    assert sorted(os.listdir(path)) == ["notes.txt"]
    assert not os.path.exists(lock_file(path))


def test_refusal_of_an_existing_path_says_what_to_pass(tmp_path):
    da = image()
    path = tmp_path / "results"
    path.mkdir()
    (path / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="overwrite=True") as info:
        da.patch.apply(double, out=path, **KW)
    assert "resume=True" in str(info.value)


def test_overwrite_replaces_a_directory(tmp_path):
    da = image()
    path = tmp_path / "results"
    path.mkdir()
    (path / "notes.txt").write_text("old")
    out = da.patch.apply(double, out=path, overwrite=True, **KW)
    xr.testing.assert_identical(out.load(), da.patch.apply(double, **KW))
    assert not (path / "notes.txt").exists()
    assert not os.path.exists(lock_file(path))


def test_a_zarr_store_with_other_variables_is_refused(tmp_path):
    da = image()
    path = tmp_path / "mine.zarr"
    other = xr.Dataset({"elevation": image(seed=5, name="elevation")})
    other.to_zarr(path, consolidated=False)
    for flags in ({}, {"resume": True}):
        func = Counter(double)
        with pytest.raises(StoreError) as info:
            da.patch.apply(func, out=path, **flags, **KW)
        assert "elevation" in str(info.value) and str(path) in str(info.value)
        assert func.calls == 0
    back = xr.open_zarr(path, consolidated=False)
    assert list(back.data_vars) == ["elevation"]
    xr.testing.assert_identical(back["elevation"].load(), other["elevation"])
    # asked for: replaced
    out = da.patch.apply(double, out=path, overwrite=True, **KW)
    assert list(xr.open_zarr(path, consolidated=False).data_vars) == ["img"]
    xr.testing.assert_identical(out.load(), da.patch.apply(double, **KW))


def test_a_finished_store_is_refused_without_overwrite_or_resume(tmp_path):
    da = image()
    path = tmp_path / "run.zarr"
    first = da.patch.apply(double, out=path, **KW).load()
    func = Counter(triple)
    with pytest.raises(StoreError, match="overwrite=True") as info:
        da.patch.apply(func, out=path, **KW)
    assert "resume=True" in str(info.value) and str(path) in str(info.value)
    assert func.calls == 0
    xr.testing.assert_identical(stored(path), first)
    again = da.patch.apply(triple, out=path, overwrite=True, **KW)
    xr.testing.assert_identical(again.load(), da.patch.apply(triple, **KW))


def test_an_empty_directory_is_used(tmp_path):
    da = image()
    path = tmp_path / "empty.zarr"
    path.mkdir()
    out = da.patch.apply(double, out=path, **KW)
    xr.testing.assert_identical(out.load(), da.patch.apply(double, **KW))


OPENERS = {
    "open_zarr": lambda p: xr.open_zarr(p, consolidated=False)["img"],
    "open_dataarray": lambda p: xr.open_dataarray(p, engine="zarr", consolidated=False),
    "open_dataset-eager": lambda p: xr.open_dataset(
        p, engine="zarr", chunks=None, consolidated=False
    )["img"],
    "dataset": lambda p: xr.open_zarr(p, consolidated=False),
    "derived-dask": lambda p: xr.open_zarr(p, consolidated=False)["img"] * 1.0,
}


@pytest.mark.parametrize("opener", OPENERS.values(), ids=OPENERS.keys())
@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_the_input_store_is_never_written(tmp_path, opener, where):
    original = image()
    outer = tmp_path / "outer"
    path = outer / "input.zarr"
    original.to_dataset().to_zarr(path, consolidated=False)
    src = opener(path)
    out = {"same": path, "inside": path / "pred", "around": outer}[where]
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        func = Counter(double)
        with pytest.raises(StoreError, match="input") as info:
            src.patch.apply(func, out=out, **flags, **KW)
        assert str(path) in str(info.value)
        assert func.calls == 0
    xr.testing.assert_identical(xr.open_zarr(path, consolidated=False)["img"].load(), original)


def test_a_netcdf_input_inside_out_is_not_deleted(tmp_path):
    original = image()
    folder = tmp_path / "folder"
    folder.mkdir()
    original.to_netcdf(folder / "input.nc")
    src = xr.open_dataarray(folder / "input.nc")
    with pytest.raises(StoreError, match="input"):
        src.patch.apply(double, out=folder, overwrite=True, **KW)
    src.close()
    xr.testing.assert_identical(xr.load_dataarray(folder / "input.nc"), original)


def test_a_zarr_array_of_the_input_is_refused(tmp_path):
    original = image()
    path = tmp_path / "input.zarr"
    original.to_dataset().to_zarr(path, consolidated=False)
    src = xr.open_zarr(path, consolidated=False)["img"]
    target = zarr.open_array(os.fspath(path), path="img", mode="r+")
    func = Counter(double)
    with pytest.raises(StoreError, match="input"):
        src.patch.apply(func, out=target, **KW)
    assert func.calls == 0
    xr.testing.assert_identical(xr.open_zarr(path, consolidated=False)["img"].load(), original)


def test_impossible_paths_are_refused_before_func(tmp_path):
    da = image()
    afile = tmp_path / "a-file"
    afile.write_text("data")
    cases = {
        afile: "regular file",
        afile / "out.zarr": "regular file",
        "/proc/xpatch-nowhere/out.zarr": "cannot",
    }
    for out, words in cases.items():
        for flags in ({}, {"overwrite": True}):
            func = Counter(double)
            with pytest.raises(StoreError, match=words) as info:
                da.patch.apply(func, out=out, **flags, **KW)
            assert str(out) in str(info.value)
            assert func.calls == 0
    assert afile.read_text() == "data"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_directory_is_refused_before_func(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    func = Counter(double)
    try:
        with pytest.raises(StoreError, match="cannot"):
            image().patch.apply(func, out=ro / "out.zarr", **KW)
    finally:
        ro.chmod(0o700)
    assert func.calls == 0


def test_int_dim_names_are_refused_before_func(tmp_path):
    da = xr.DataArray(image().values, dims=(0, 1))
    func = Counter(double)
    with pytest.raises(StoreError, match="string") as info:
        da.patch.apply(func, {0: 10, 1: 10}, out=tmp_path / "o.zarr")
    assert "rename" in str(info.value)
    assert func.calls == 0


def test_a_multiindex_spatial_dim_is_refused_before_func(tmp_path):
    import pandas as pd

    mi = pd.MultiIndex.from_product([range(5), range(10)], names=("row", "col"))
    da = xr.DataArray(np.random.default_rng(0).random((50, 4)), dims=("x", "band"))
    da = da.assign_coords(xr.Coordinates.from_pandas_multiindex(mi, "x"))
    func = Counter(double)
    with pytest.raises(StoreError, match="MultiIndex") as info:
        da.patch.apply(func, x=10, step=5, out=tmp_path / "o.zarr")
    assert "reset_index" in str(info.value)
    assert func.calls == 0


# --- 2. one writer at a time -------------------------------------------------------------
def test_a_second_writer_is_refused(runner, tmp_path):
    path = tmp_path / "shared.zarr"
    started, go = tmp_path / "started", tmp_path / "go"
    first = runner(out=path, wait_at_call=3, started=str(started), go=str(go))
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        lock = read_lock(path)
        assert lock["pid"] == first.pid and lock["host"]
        # while the first runs, a second is refused, whatever it asks for
        attempts = [{}, {"overwrite": True}, {"resume": True}]
        code, out, err = finish(runner(out=path, attempts=attempts))
        assert code == 3, err
        for outcome in json.loads(out):
            assert outcome["error"] == "StoreError"
            assert str(first.pid) in outcome["message"]
            assert "another process" in outcome["message"]
        go.touch()
        code, out, err = finish(first)
    finally:
        first.kill()
        first.communicate()
    assert code == 0, err
    xr.testing.assert_identical(stored(path), image().patch.apply(double, **KW))
    assert not os.path.exists(lock_file(path))


def test_the_lock_is_held_during_the_run_and_released_after(tmp_path):
    da = image()
    path = tmp_path / "run.zarr"
    seen = []

    def func(p):
        seen.append(read_lock(path))
        if len(seen) == 30:
            raise RuntimeError("model failed")
        return p * 2

    with pytest.raises(RuntimeError, match="model failed"):
        da.patch.apply(func, out=path, **KW)
    assert seen[0]["pid"] == os.getpid()
    assert not os.path.exists(lock_file(path))  # released after an error
    out = da.patch.apply(double, out=path, resume=True, **KW)
    assert not os.path.exists(lock_file(path))  # and after success
    xr.testing.assert_identical(out.load(), da.patch.apply(double, **KW))


def test_the_lock_of_a_killed_run_is_taken_over(runner, tmp_path):
    da = image()
    path = tmp_path / "run.zarr"
    pid = killed_halfway(runner, path)
    assert read_lock(path)["pid"] == pid  # left behind
    with pytest.raises(StoreError, match="resume=True"):  # the store is there
        da.patch.apply(double, out=path, **KW)
    out = da.patch.apply(double, out=path, resume=True, **KW)
    np.testing.assert_array_equal(out.values, da.patch.apply(double, **KW).values)
    assert not os.path.exists(lock_file(path))
    # overwrite=True takes over a dead lock too
    killed_halfway(runner, path, attempts=[{"overwrite": True}])
    out = da.patch.apply(triple, out=path, overwrite=True, **KW)
    np.testing.assert_array_equal(out.values, da.patch.apply(triple, **KW).values)
    assert not os.path.exists(lock_file(path))


# --- 3. killed while the store is created -----------------------------------------------
@pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill points run in forked children")
@pytest.mark.parametrize("scenario", ["fresh", "overwrite"])
def test_a_run_killed_while_creating_the_store_resumes(runner, tmp_path, scenario):
    da = image()
    expected = da.patch.apply(double, **KW)
    spec = {"max": 80}
    if scenario == "overwrite":
        template = tmp_path / "template.zarr"
        da.patch.apply(double, out=template, **KW)  # a finished store, replaced each time
        spec.update(template=str(template), overwrite=True)
    base = tmp_path / "run.zarr"
    code, out, err = finish(runner(out=base, kill_points=spec), timeout=120)
    assert code == 0, err
    outcomes = json.loads(out)
    assert outcomes.pop("None") == 0  # the dry run finished
    assert len(outcomes) >= 8
    assert all(sig == signal.SIGKILL for sig in outcomes.values()), outcomes
    for n in outcomes:
        path = f"{base}.{n}"
        func = Counter(double)
        result = da.patch.apply(func, out=path, resume=True, **KW)
        np.testing.assert_array_equal(result.values, expected.values, err_msg=f"killed at {n}")
        xr.testing.assert_identical(result.coords.to_dataset(), expected.coords.to_dataset())
        assert read_done(path).all()
        assert not os.path.exists(lock_file(path))


# --- 4. resume recognises func by its results -------------------------------------------
def test_resume_refuses_a_function_that_computes_something_else(runner, tmp_path):
    da = image()
    path = tmp_path / "run.zarr"
    killed_halfway(runner, path)  # p * 2
    before = read_done(path)
    func = Counter(lambda p: p * 3)
    with pytest.raises(StoreError) as info:
        da.patch.apply(func, out=path, resume=True, **KW)
    message = str(info.value)
    assert "Window" in message and "differ" in message
    assert func.calls == 1  # one window, to compare
    np.testing.assert_array_equal(read_done(path), before)  # untouched
    # the same function under another name (and wrapped) is accepted
    renamed = Counter(lambda p: 2 * p)
    out = da.patch.apply(renamed, out=path, resume=True, **KW)
    assert renamed.calls < 63
    np.testing.assert_array_equal(out.values, da.patch.apply(double, **KW).values)


class Model:
    """A model with weights, defined here (another module than the run's)."""

    def __init__(self, w):
        self.w = w

    def __call__(self, p):
        return p * self.w


@pytest.mark.parametrize("batch_size", [None, 4])
def test_resume_catches_a_model_whose_weights_changed(runner, tmp_path, batch_size):
    da = image()
    path = tmp_path / "run.zarr"
    kw = dict(KW, batch_size=batch_size)
    killed_halfway(runner, path, kill_at_call=40 if batch_size is None else 10, w=1.5, kw=kw)
    for w in (1.6, 1.5002):
        with pytest.raises(StoreError, match="differ"):
            da.patch.apply(Model(w), out=path, resume=True, **kw)
    out = da.patch.apply(Model(1.5), out=path, resume=True, **kw)
    np.testing.assert_array_equal(out.values, da.patch.apply(Model(1.5), **kw).values)


def test_the_fingerprint_is_kept_in_the_record(tmp_path):
    da = image()
    path = tmp_path / "run.zarr"
    da.patch.apply(double, out=path, **KW)
    record = read_record(zarr.open_group(os.fspath(path), mode="r").attrs["xpatch"])
    fingerprint = record["fingerprint"]
    assert fingerprint["windows"] == [0]
    assert len(json.dumps(fingerprint)) < 4000  # small
    assert record["func"].endswith("double")  # kept for information only
    # a finished store resumed with another function is refused too
    with pytest.raises(StoreError, match="differ"):
        da.patch.apply(triple, out=path, resume=True, **KW)
    # and the same one is not recomputed beyond the one window compared
    func = Counter(double)
    again = da.patch.apply(func, out=path, resume=True, **KW)
    assert func.calls == 1
    xr.testing.assert_identical(again.load(), da.patch.apply(double, **KW))


def test_a_refused_run_leaves_nothing_behind(tmp_path):
    """A refused run leaves nothing behind: no directory, no lock."""
    da = image()
    path = tmp_path / "sub" / "run.zarr"
    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(StoreError):
        da.patch.apply(double, out=afile / "run.zarr", **KW)
    assert sorted(os.listdir(tmp_path)) == ["f"]
    da.patch.apply(double, out=path, **KW)
    assert sorted(os.listdir(tmp_path / "sub")) == ["run.zarr"]
    shutil.rmtree(path)
