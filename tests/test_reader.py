"""Lazy file sources read by stored chunks, each decoded once (``_reader.py``, ``_tiles.py``).

Three readers: rows of stored chunks where they fit the reader's budget, one array filled
row by row where the whole source takes no more than those rows, tiles (stored chunks in
every spatial dim) where rows do not fit; every test of results runs all three."""

from __future__ import annotations

import time

import numpy as np
import pytest
import xarray as xr
from reference import recording_readers

import xpatch  # noqa: F401
from xpatch import _reader, _tiles

pytest.importorskip("zarr")


@pytest.fixture(params=["rows", "tiles", "whole"])
def reader(request, monkeypatch):
    """Which reader ``ChunkReader.make`` picks: rows, tiles (rows never fit), or one
    array filled row by row (the rows read ahead would take more than the array)."""
    held = {"rows": 0, "tiles": 1 << 62, "whole": 1 << 20}[request.param]
    monkeypatch.setattr(_reader, "_row_bytes", lambda variables, grid: held)
    return {"rows": _reader.RowReader, "tiles": _reader.TileReader, "whole": _reader.WholeReader}[
        request.param
    ]


def _recording(monkeypatch) -> list:
    """The readers apply makes, recorded as they are made."""
    return recording_readers(monkeypatch)


def _streaming(made: list) -> _reader.ChunkReader:
    """The one recorded reader that streamed patches."""
    (reader,) = [r for r in made if r is not None and r.schedule is not None]
    return reader


def _volume() -> xr.DataArray:
    rng = np.random.default_rng(3)
    return xr.DataArray(
        rng.integers(0, 1000, (40, 36, 30)).astype("float32"),
        dims=("z", "y", "x"),
        coords={"z": np.arange(40) * 0.5, "y": np.arange(36) * 2.0, "x": np.arange(30) * 2.0},
        name="v",
    )


@pytest.fixture(params=["zarr", "netcdf"])
def stored(request, tmp_path):
    da = _volume()
    if request.param == "zarr":
        da.chunk({"z": 8, "y": 12, "x": 10}).to_zarr(tmp_path / "v.zarr")
        return da, lambda: xr.open_zarr(tmp_path / "v.zarr", chunks=None)["v"]
    pytest.importorskip("h5netcdf")
    path = tmp_path / "v.nc"
    da.to_netcdf(path, engine="h5netcdf", encoding={"v": {"chunksizes": (8, 12, 10)}})
    return da, lambda: xr.open_dataarray(path, engine="h5netcdf")


@pytest.mark.parametrize(
    "kw",
    [
        dict(z=12, y=12, x=12, step=6),
        dict(z=12, y=10, x=16, step=5, border="pad", pad_mode="wrap"),
        dict(z=12, y=10, x=16, step=5, border="pad", pad_mode="constant"),
        dict(z=12, y=12, x=12, step=6, border="pad", pad_mode="reflect", batch_size=5),
        dict(z=12, y=12, x=12, step=6, chunks=16, weights="hann"),
        dict(z=12, y=12, x=12, step=7, border="edge"),
        dict(z=16, y=16, x=16, step=8, border="pad", pad_mode="wrap", batch_size=3),
    ],
)
def test_lazy_file_apply_equals_in_memory(stored, reader, kw):
    da, open_ = stored
    func = lambda p: p * 2 + 1  # noqa: E731
    lazy = open_()
    assert type(_reader.ChunkReader.make(lazy, lazy.patch.grid(z=12, y=12, x=12))) is reader
    out = lazy.patch.apply(func, **kw)
    expected = da.patch.apply(func, **kw)
    xr.testing.assert_identical(out.load(), expected)


def test_each_chunk_row_is_read_once(stored, monkeypatch):
    _, open_ = stored
    reads, held = [], []
    read = _reader.RowReader._read

    def counted(self, k, row):
        reads.append((k, row))
        return read(self, k, row)

    monkeypatch.setattr(_reader.RowReader, "_read", counted)
    monkeypatch.setattr(_reader, "_row_bytes", lambda variables, grid: 0)  # rows, not whole
    lazy = open_()
    assert type(_reader.ChunkReader.make(lazy, lazy.patch.grid(z=12, y=12, x=12))) is (
        _reader.RowReader
    )

    def model(p):
        held.append(len(reads))
        return p

    lazy.patch.apply(model, z=12, y=12, x=12, step=6)
    assert sorted(reads) == [(0, r) for r in range(5)]  # 40 / 8 rows, once each
    assert held[0] < 5  # read ahead, not all at once


def test_each_tile_is_read_once_when_the_budget_allows(stored, monkeypatch):
    _, open_ = stored
    monkeypatch.setattr(_reader, "_row_bytes", lambda variables, grid: 1 << 62)
    reads, held = [], []
    read = _reader.TileReader._read

    def counted(self, k, tile):
        reads.append((k, tile))
        return read(self, k, tile)

    monkeypatch.setattr(_reader.TileReader, "_read", counted)

    def model(p):
        held.append(len(reads))
        return p

    open_().patch.apply(model, z=12, y=12, x=12, step=6)
    # 40 x 36 x 30 in stored chunks of 8 x 12 x 10: 5 x 3 x 3 tiles, once each
    assert sorted(reads) == [(0, (i, j, k)) for i in range(5) for j in range(3) for k in range(3)]
    assert held[0] < len(reads)  # read ahead, not all at once


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_a_read_error_names_the_window(stored, reader, monkeypatch, threads):
    # XPATCH_NUM_THREADS=1 (or inside a dask task): no helper thread, units read inline;
    # 2 and 3: one and two helper threads
    monkeypatch.setenv("XPATCH_NUM_THREADS", threads)
    _, open_ = stored
    read = reader._read

    def broken(self, k, unit):
        if unit == 3 or (isinstance(unit, tuple) and unit[0] == 3):
            raise OSError("disk gone")
        return read(self, k, unit)

    monkeypatch.setattr(reader, "_read", broken)
    with pytest.raises(OSError, match="disk gone") as info:
        open_().patch.apply(lambda p: p, z=12, y=12, x=12, step=6)
    notes = [n for n in info.value.__notes__ if "raised while reading the patch of" in n]
    assert len(notes) == 1
    assert "Window" in notes[0] and "z=18:30" in notes[0]  # the first needing z 24+


@pytest.mark.parametrize("border", ["squeeze", "pad"])
def test_patches_read_from_a_file_are_read_only(stored, reader, border):
    _, open_ = stored
    seen = []

    def model(p):
        seen.append(p)
        assert not p.values.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            p.values[(0,) * p.ndim] = 1
        return p

    kw = dict(border="pad", pad_mode="reflect") if border == "pad" else {}
    open_().patch.apply(model, z=12, y=12, x=12, step=5, **kw)
    assert seen


def test_sources_without_stored_chunking_use_isel():
    da = _volume()
    assert _reader.ChunkReader.make(da, da.patch.grid(z=12, y=12, x=12)) is None
    assert _reader.ChunkReader.make(da.chunk(8), da.patch.grid(z=12, y=12, x=12)) is None


def test_rows_too_large_for_the_memory_budget_are_read_as_tiles(stored, monkeypatch):
    # a row of stored chunks spans every other dim whole: on a huge volume holding a few
    # rows would grow with the volume, so beyond the reader's budget tiles are read
    da, open_ = stored
    lazy = open_()
    grid = lazy.patch.grid(z=12, y=12, x=12, step=6)
    assert type(_reader.ChunkReader.make(lazy, grid)) is _reader.WholeReader  # small
    monkeypatch.setenv("XPATCH_MEMORY_BUDGET", "256KiB")  # a row here is 8 x 36 x 30 x 4 B
    assert type(_reader.ChunkReader.make(lazy, grid)) is _reader.TileReader
    out = lazy.patch.apply(lambda p: p * 2 + 1, z=12, y=12, x=12, step=6)
    xr.testing.assert_identical(
        out.load(), da.patch.apply(lambda p: p * 2 + 1, z=12, y=12, x=12, step=6)
    )


@pytest.mark.parametrize("fmt", ["zarr", "netcdf"])
def test_a_band_dim_first_is_read_whole_with_each_tile(tmp_path, reader, fmt):
    rng = np.random.default_rng(5)
    da = xr.DataArray(
        rng.normal(size=(3, 20, 18, 16)).astype("float32"),
        dims=("band", "z", "y", "x"),
        coords={"band": ["r", "g", "b"], "x": np.arange(16) * 0.5},
        name="v",
    )
    chunks = (1, 8, 6, 10)  # the band dim is stored one by one, read whole
    if fmt == "zarr":
        da.chunk(dict(zip(da.dims, chunks))).to_zarr(tmp_path / "v.zarr")
        lazy = xr.open_zarr(tmp_path / "v.zarr", chunks=None)["v"]
    else:
        pytest.importorskip("h5netcdf")
        da.to_netcdf(tmp_path / "v.nc", engine="h5netcdf", encoding={"v": {"chunksizes": chunks}})
        lazy = xr.open_dataarray(tmp_path / "v.nc", engine="h5netcdf")
    func = lambda p: p.mean("band") * 2  # noqa: E731
    for kw in [
        dict(z=8, y=8, x=8, step=5),
        dict(z=8, y=8, x=8, step=5, border="pad", pad_mode="reflect"),
        dict(z=8, y=8, x=8, step=4, chunks=12, on_chunk=lambda c: c.round(2)),
    ]:
        xr.testing.assert_identical(lazy.patch.apply(func, **kw).load(), da.patch.apply(func, **kw))


@pytest.mark.parametrize("fmt", ["zarr", "netcdf"])
def test_a_dataset_of_variables_stored_in_other_chunks(tmp_path, reader, fmt):
    rng = np.random.default_rng(6)
    ds = xr.Dataset(
        {
            "a": (("z", "y", "x"), rng.normal(size=(24, 20, 18)).astype("float32")),
            "b": (("z", "y", "x"), rng.integers(0, 9, (24, 20, 18)).astype("int16")),
        },
        coords={"z": np.arange(24) * 2.0},
    )
    if fmt == "zarr":
        encoding = {"a": {"chunks": (8, 10, 6)}, "b": {"chunks": (5, 7, 18)}}
        ds.to_zarr(tmp_path / "v.zarr", encoding=encoding)
        lazy = xr.open_zarr(tmp_path / "v.zarr", chunks=None)
    else:
        pytest.importorskip("h5netcdf")
        encoding = {"a": {"chunksizes": (8, 10, 6)}, "b": {"chunksizes": (5, 7, 18)}}
        ds.to_netcdf(tmp_path / "v.nc", engine="h5netcdf", encoding=encoding)
        lazy = xr.open_dataset(tmp_path / "v.nc", engine="h5netcdf")
    func = lambda p: p * 2 + 1  # noqa: E731
    for kw in [
        dict(z=8, y=8, x=8, step=5),
        dict(z=8, y=8, x=8, step=5, border="pad", pad_mode="constant"),
        dict(z=8, y=8, x=8, step=6, border="pad", pad_mode="wrap", batch_size=4),
    ]:
        xr.testing.assert_identical(lazy.patch.apply(func, **kw).load(), ds.patch.apply(func, **kw))


def test_under_a_tight_budget_tiles_stay_within_it_and_are_decoded_few_times(tmp_path, monkeypatch):
    # the memory-scaling benchmark's workload, 8 times smaller: stored chunks 16^3,
    # patch 8, step 6, chunks=16, a cache of a few tiles (the benchmark: 128^3, 64, 48)
    n, c = 64, 16
    z, y, x = np.ogrid[:n, :n, :n]
    da = xr.DataArray(
        (np.sin(z * 0.05) + np.cos(y * 0.07) + np.sin(x * 0.03)).astype("float32"),
        dims=("z", "y", "x"),
        name="v",
    )
    da.chunk(c).to_zarr(tmp_path / "v.zarr")
    lazy = xr.open_zarr(tmp_path / "v.zarr", chunks=None)["v"]
    tile = c**3 * 4
    monkeypatch.setenv("XPATCH_MEMORY_BUDGET", str(4 * 12 * tile))  # 12 of the 64 tiles
    made = _recording(monkeypatch)
    held = []

    def model(p):
        reader = _streaming(made)
        held.append(sum(reader._nbytes(key) for key in reader.held))
        return p * 2

    kw = dict(z=8, y=8, x=8, step=6, chunks=c, on_chunk=lambda ch: ch.round(3))
    out = lazy.patch.apply(model, **kw)
    xr.testing.assert_identical(out.load(), da.patch.apply(lambda p: p * 2, **kw))
    reader = _streaming(made)
    assert type(reader) is _reader.TileReader
    schedule = reader.schedule
    assert schedule.budget == 12 * tile > schedule.floor  # the budget binds, not the floor
    assert max(held) <= schedule.peak_bytes <= schedule.budget
    reads = np.array(list(schedule.reads.values()))
    assert len(reads) == (n // c) ** 3
    assert reads.max() > 1  # some tiles were dropped for the budget and read again
    assert reads.max() <= 2**3


def test_a_budget_below_one_window_is_raised_to_what_it_needs(stored, monkeypatch):
    da, open_ = stored
    monkeypatch.setenv("XPATCH_MEMORY_BUDGET", "1")
    made = _recording(monkeypatch)
    out = open_().patch.apply(lambda p: p + 1, z=12, y=12, x=12, step=6)
    xr.testing.assert_identical(
        out.load(), da.patch.apply(lambda p: p + 1, z=12, y=12, x=12, step=6)
    )
    schedule = _streaming(made).schedule
    assert schedule.budget == schedule.floor == schedule.peak_bytes > 0


def test_the_schedule_drops_the_tile_whose_next_use_comes_last():
    # Belady: with room for two tiles, a b c a b: c evicts b (next used after a)
    size = lambda key: 1  # noqa: E731
    s = _tiles.TileSchedule([["a"], ["b"], ["c"], ["a"], ["b"]], size, budget=2, ahead=0)
    steps = []
    for i in range(5):
        read, drop = s.admit(i)
        steps.append((read, drop, s.done(i)))
    assert steps == [
        (["a"], [], []),
        (["b"], [], []),
        (["c"], ["b"], ["c"]),
        ([], [], ["a"]),
        (["b"], [], ["b"]),
    ]
    assert s.reads == {"a": 1, "b": 2, "c": 1} and s.peak_bytes == 2


def test_the_schedule_never_holds_more_than_its_budget():
    rng = np.random.default_rng(0)
    needs = [list(rng.choice(12, size=rng.integers(1, 4), replace=False)) for _ in range(200)]
    sizes = {k: int(rng.integers(1, 5)) for k in range(12)}
    for budget, ahead in [(0, 0), (10, 2), (20, 4), (100, 3)]:
        s = _tiles.TileSchedule(needs, sizes.__getitem__, budget=budget, ahead=ahead)
        held: set = set()
        for j in range(min(ahead, len(needs))):
            read, drop = s.admit(j)
            held = (held - set(drop)) | set(read)
        for i in range(len(needs)):
            if i + ahead < len(needs):
                read, drop = s.admit(i + ahead)
                held = (held - set(drop)) | set(read)
            window = set(needs[i])
            assert window <= held
            assert sum(sizes[k] for k in held) <= s.budget
            held -= set(s.done(i))
        assert not held and s.budget == max(budget, s.floor)


def test_lazy_patches_carry_the_labels_of_in_memory_patches(tmp_path):
    # the reader labels in-bounds patches from cached parts, as in-memory patches are
    # labeled: same coords (index, non-index, scalar, 2-D), attrs and name, read-only
    da = _volume().assign_coords(
        t=np.float64(3.0),
        zz=("z", np.arange(40) * 10),
        yx=(("y", "x"), np.arange(36 * 30).reshape(36, 30)),
    )
    da.attrs = {"units": "counts", "nested": {"a": 1}}
    da.chunk({"z": 8, "y": 12, "x": 10}).to_zarr(tmp_path / "v.zarr")
    lazy = xr.open_zarr(tmp_path / "v.zarr", chunks=None)["v"]
    lazy_patches, memory_patches = [], []

    def keep(into):
        def model(p):
            into.append(p)
            return p

        return model

    kw = dict(z=12, y=12, x=12, step=6, border="pad", pad_mode="reflect")
    lazy.patch.apply(keep(lazy_patches), **kw)
    lazy.load().patch.apply(keep(memory_patches), **kw)
    assert len(lazy_patches) == len(memory_patches) > 0
    for got, want in zip(lazy_patches, memory_patches):
        xr.testing.assert_identical(got, want)
        assert not got.values.flags.writeable


def test_a_first_lazy_apply_does_not_import_dask_array(tmp_path):
    # xarray's constructors check data against dask's array type, importing dask.array
    # (0.4-0.6 s) the first time; a first apply on a lazily opened file need not pay it
    import subprocess
    import sys

    _volume().chunk(8).to_zarr(tmp_path / "v.zarr")
    code = f"""
import sys, numpy as np, xarray as xr, xpatch
da = xr.open_zarr({str(tmp_path / "v.zarr")!r}, chunks=None)["v"]
if "dask.array" in sys.modules:
    print("SKIP: opening the store imported dask.array")
    raise SystemExit(0)
out = da.patch.apply(lambda p: p.values * 2, z=12, y=12, x=12, step=6)
assert isinstance(out.data, np.ndarray)
print("imported" if "dask.array" in sys.modules else "not imported")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    if run.stdout.startswith("SKIP"):
        pytest.skip(run.stdout.strip())
    assert run.stdout.strip() == "not imported"


def test_a_cut_assembled_from_tiles_is_the_indexed_array():
    # pure planning (_tiles): any chunking, slices and padded (integer) indexers per axis
    from xpatch._sampling import take

    rng = np.random.default_rng(7)
    for _ in range(200):
        shape = tuple(int(n) for n in rng.integers(1, 14, size=rng.integers(1, 4)))
        arr = rng.integers(0, 100, shape)
        chunks = [tuple(np.diff(np.unique([0, *rng.integers(1, n + 1, 3), n]))) for n in shape]
        edges = [_tiles.edges_of(c) for c in chunks]
        tiles = {}
        for index in np.ndindex(*(len(c) for c in chunks)):
            box = tuple(slice(int(e[t]), int(e[t + 1])) for e, t in zip(edges, index))
            tiles[index] = arr[box]
        indexers = []
        for n in shape:
            if rng.random() < 0.5:
                a = int(rng.integers(0, n))
                indexers.append(slice(a, int(rng.integers(a + 1, n + 1))))
            else:  # a padded window: wrapped, reflected or repeated positions
                indexers.append(rng.integers(0, n, size=int(rng.integers(1, 2 * n + 2))))
        cut = _tiles.Cut.of([_tiles.axis_cut(e, ix) for e, ix in zip(edges, indexers)])
        box = cut.assemble(tiles.__getitem__, arr.dtype)
        got = take(box, cut.local, [])
        want = arr
        for axis, ix in enumerate(indexers):
            want = want[(slice(None),) * axis + (ix,)]
        np.testing.assert_array_equal(got, want)
        # the box holds only the spans of the tiles the indices touch
        assert box.size <= arr.size


def test_a_file_smaller_than_its_rows_read_ahead_fills_one_array(stored, monkeypatch):
    # rows read ahead would hold more than the whole array: rows are decoded (each once,
    # ahead of need) into one array of the source's size, and patches are read-only views
    da, open_ = stored
    monkeypatch.setattr(_reader, "_row_bytes", lambda variables, grid: 1 << 20)
    reads, seen = [], []
    read = _reader.RowReader._read

    def counted(self, k, row):
        if row >= 2:  # the rows the first windows do not need: slow to decode
            time.sleep(0.05)
        reads.append((k, row))
        return read(self, k, row)

    monkeypatch.setattr(_reader.RowReader, "_read", counted)
    made = _recording(monkeypatch)
    lazy = open_()

    seen_held: list[int] = []  # the rows asked for, as each patch reaches the model

    def model(p):
        seen.append((len(reads), p.values.flags.writeable, p.values.base is not None))
        seen_held.append(len(_streaming(made).held))
        return p * 2

    out = lazy.patch.apply(model, z=12, y=12, x=12, step=6)
    xr.testing.assert_identical(out, da.patch.apply(lambda p: p * 2, z=12, y=12, x=12, step=6))
    assert type(_streaming(made)) is _reader.WholeReader
    assert sorted(reads) == [(0, r) for r in range(5)]  # 40 / 8 rows, once each
    assert seen[0][0] < 5  # the model ran before every row was read
    # every row was asked for from the start (the array takes the source's memory
    # anyway): the helper thread decodes on while the first windows run
    assert seen_held[0] == 5
    assert not any(writeable for _, writeable, _ in seen)
    assert all(view for _, _, view in seen)  # views of the one array, no copy per patch
    assert not isinstance(lazy.variable._data, np.ndarray)  # the user's object stays lazy


def test_a_file_larger_than_its_rows_read_ahead_streams_rows(stored, monkeypatch):
    _, open_ = stored
    # rows of 8 planes; read ahead, a window's rows and its slab: fewer bytes than the file
    monkeypatch.setattr(_reader, "_row_bytes", lambda variables, grid: 8 * 36 * 30 * 4)
    made = _recording(monkeypatch)
    open_().patch.apply(lambda p: p * 2, z=12, y=12, x=12, step=6)
    assert type(_streaming(made)) is _reader.RowReader
