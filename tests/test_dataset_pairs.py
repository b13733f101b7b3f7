"""Image/label pairs for training: a Dataset with ``image`` and ``mask`` variables
through ``ds.patch.dataset(...)``, with an optional per-sample ``transform``.

``ds[i]`` is ``({"image": ..., "mask": ...}, i)``; PyTorch's default collate turns the
dicts into batches of tensors. ``transform`` is called on each sample where it is
loaded (in the DataLoader's worker), so a random flip is applied to the image and its
mask together. The source here is a zarr store opened lazily: the workers read it.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import random

import numpy as np
import pytest
import xarray as xr

import xpatch  # noqa: F401  (registers .patch)

# the string coordinates have no zarr v3 dtype spec yet (zarr's warning)
pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")

SIZE = dict(y=16, x=16)


def scene() -> xr.Dataset:
    """A 2-band image and its label mask (a threshold of band 0, so they must agree)."""
    rng = np.random.default_rng(11)
    image = rng.random((2, 48, 64)).astype("float32")
    return xr.Dataset(
        {
            "image": (("band", "y", "x"), image),
            "mask": (("y", "x"), (image[0] > 0.5).astype("uint8")),
        },
        coords={"band": ["red", "nir"], "y": np.arange(48) * 10.0, "x": np.arange(64) * 10.0},
    )


@pytest.fixture(scope="module")
def context():
    """Workers that get the dataset pickled, as under spawn (so the zarr source is
    re-opened and the transform travels by reference), started from a forkserver
    with the heavy imports preloaded: fast, and no fork of a threaded process."""
    pytest.importorskip("torch")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "xarray", "torch", "xpatch", "zarr"])
    return ctx


@pytest.fixture
def on_disk(tmp_path):
    path = tmp_path / "scene.zarr"
    scene().to_zarr(path, consolidated=False)
    return xr.open_zarr(path, consolidated=False)


class RandomFlip:
    """Flip image and mask along x together, half of the time (picklable: module level)."""

    def __call__(self, sample: dict) -> dict:
        flip = random.random() < 0.5  # PyTorch seeds this generator in each worker
        out = {k: (v[..., ::-1].copy() if flip else v) for k, v in sample.items()}
        out["flipped"] = np.bool_(flip)
        out["pid"] = np.int64(os.getpid())
        return out


def expected(source: xr.Dataset, grid, i: int) -> dict:
    window = grid[int(i)]
    return {k: source[k].isel(window).values for k in ("image", "mask")}


def test_a_sample_is_a_dict_of_image_and_mask():
    ds = scene()
    pairs = ds.patch.dataset(**SIZE)
    assert len(pairs) == 12
    sample, i = pairs[5]
    assert i == 5 and set(sample) == {"image", "mask"}
    assert sample["image"].shape == (2, 16, 16) and sample["mask"].shape == (16, 16)
    for k, v in expected(ds, pairs.grid, 5).items():
        np.testing.assert_array_equal(sample[k], v)


def test_transform_is_applied_to_each_sample():
    ds = scene()
    pairs = ds.patch.dataset(transform=lambda s: (s["image"], s["mask"]), **SIZE)
    (image, mask), i = pairs[-1]
    assert i == 11
    np.testing.assert_array_equal(image, ds.image.values[:, 32:, 48:])
    np.testing.assert_array_equal(mask, ds["mask"].values[32:, 48:])
    flipped = ds.image.patch.dataset(transform=np.fliplr, **SIZE)[0][0]  # DataArray: the array
    np.testing.assert_array_equal(flipped, ds.image.values[:, :16, :16][:, ::-1])
    assert "transform" in repr(pairs)


def test_transform_must_be_callable():
    with pytest.raises(TypeError, match=r"transform must be a callable.*got 'flip'"):
        scene().patch.dataset(transform="flip", **SIZE)


def test_a_dataset_with_a_transform_pickles(on_disk):
    pairs = on_disk.patch.dataset(transform=RandomFlip(), **SIZE)
    back = pickle.loads(pickle.dumps(pairs))
    sample, index = back[3]
    assert index == 3 and isinstance(back.transform, RandomFlip)
    assert sample["mask"].shape == (16, 16)


def test_pairs_through_a_dataloader_with_workers(on_disk, context):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    pairs = on_disk.patch.dataset(**SIZE)
    loader = DataLoader(pairs, batch_size=4, num_workers=2, multiprocessing_context=context)
    seen = []
    for batch, index in loader:
        assert batch["image"].shape[1:] == (2, 16, 16) and batch["image"].dtype == torch.float32
        assert batch["mask"].shape[1:] == (16, 16) and batch["mask"].dtype == torch.uint8
        for k, i in enumerate(index.tolist()):
            for name, values in expected(scene(), pairs.grid, i).items():
                np.testing.assert_array_equal(batch[name][k].numpy(), values)
            seen.append(i)
    assert sorted(seen) == list(range(len(pairs)))


def test_a_random_flip_in_the_workers_keeps_image_and_mask_together(on_disk, context):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    torch.manual_seed(0)  # the workers' seeds (Python's random too) follow from it
    pairs = on_disk.patch.dataset(transform=RandomFlip(), step=8, **SIZE)
    loader = DataLoader(
        pairs, batch_size=5, num_workers=2, shuffle=True, multiprocessing_context=context
    )
    flips, pids, seen = [], set(), []
    for batch, index in loader:
        for k, i in enumerate(index.tolist()):
            image, mask = batch["image"][k].numpy(), batch["mask"][k].numpy()
            np.testing.assert_array_equal(mask, (image[0] > 0.5).astype("uint8"))  # together
            want = expected(scene(), pairs.grid, i)
            flipped = bool(batch["flipped"][k])
            np.testing.assert_array_equal(
                image, want["image"][..., ::-1] if flipped else want["image"]
            )
            flips.append(flipped)
            seen.append(i)
        pids.update(batch["pid"].tolist())
    assert sorted(seen) == list(range(len(pairs)))
    assert any(flips) and not all(flips)
    assert os.getpid() not in pids and len(pids) == 2  # applied in the two workers
