"""A map-style dataset of patches, for a PyTorch ``DataLoader`` (torch is never imported)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from xpatch._sampling import Sampler
from xpatch._structure import all_variables
from xpatch._validate import index
from xpatch.grid import PatchGrid


class PatchDataset:
    """Patches of a DataArray (or Dataset) by index, as numpy arrays.

    ``len(ds)`` is the number of windows; ``ds[i]`` returns ``(patch, i)`` where
    ``patch`` is a numpy array in the source's dim order (a dict of arrays, one per
    variable, for a Dataset: image/label pairs from a Dataset with ``image`` and
    ``mask`` variables). Only the patch is read from a lazy source. The dataset
    pickles with its (lazy) source, so a ``DataLoader`` with ``num_workers > 0``
    re-opens files in its worker processes rather than copying data.

    Parameters
    ----------
    obj : DataArray or Dataset
        The source.
    grid : PatchGrid
        The windows.
    transform : callable, optional
        Called on each sample (the array, or the dict of arrays) where it is loaded,
        in the ``DataLoader``'s worker; what it returns is the sample. One call sees
        every variable of the patch, so a random flip or crop can treat an image and
        its mask alike. It must pickle (a module-level function or class) for
        ``num_workers > 0`` under the spawn start method.

    Examples
    --------
    >>> import numpy as np, xarray as xr, xpatch
    >>> da = xr.DataArray(np.arange(16.0).reshape(4, 4), dims=("y", "x"))
    >>> ds = da.patch.dataset(y=2, x=2)
    >>> patch, index = ds[1]
    >>> patch
    array([[2., 3.],
           [6., 7.]])

    Image/label pairs, flipped together:

    >>> scene = xr.Dataset({"image": (("band", "y", "x"), np.ones((3, 8, 8))),
    ...                     "mask": (("y", "x"), np.eye(8, dtype="uint8"))})
    >>> def flip(sample):
    ...     return {k: v[..., ::-1] for k, v in sample.items()}
    >>> pairs = scene.patch.dataset(y=4, x=4, transform=flip)
    >>> sample, index = pairs[0]
    >>> sample["image"].shape, sample["mask"][0]
    ((3, 4, 4), array([0, 0, 0, 1], dtype=uint8))
    """

    def __init__(
        self,
        obj: xr.DataArray | xr.Dataset,
        grid: PatchGrid,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if transform is not None and not callable(transform):
            raise TypeError(
                f"transform must be a callable (sample -> sample) or None, got {transform!r}"
                f" ({type(transform).__name__}); e.g. transform=lambda s: s[..., ::-1]"
            )
        self.obj = obj
        self.grid = grid
        self.transform = transform
        self._sampler: Sampler | None = None

    def __len__(self) -> int:
        return len(self.grid)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        if self._sampler is None:
            self._sampler = Sampler(self.obj, self.grid)
        window = self.grid[index(i)]  # an int as sequences take it (-1 is the last)
        patch = self._sampler(window)
        if isinstance(patch, xr.Dataset):
            sample: Any = {k: _writable(v.values) for k, v in patch.data_vars.items()}
        else:
            sample = _writable(patch.values)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample, window.index

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sampler"] = None
        state["obj"] = _detach_memmaps(self.obj)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["obj"] = _attach_memmaps(state["obj"])
        self.__dict__.update(state)

    def __repr__(self) -> str:
        extra = "" if self.transform is None else f", transform={self.transform!r}"
        return f"<PatchDataset {len(self)} patches of {dict(self.obj.sizes)}{extra}>"


class _MemmapRecipe:
    """How to re-open a memory-mapped variable in another process."""

    def __init__(self, mm: np.memmap) -> None:
        base = mm
        while isinstance(getattr(base, "base", None), np.memmap):
            base = base.base
        self.filename = mm.filename
        self.dtype = mm.dtype
        self.shape = mm.shape
        self.offset = mm.offset
        self.order = "F" if mm.flags.f_contiguous and not mm.flags.c_contiguous else "C"

    def open(self) -> np.memmap:
        return np.memmap(
            self.filename,
            dtype=self.dtype,
            mode="r",
            shape=self.shape,
            offset=self.offset,
            order=self.order,
        )


def _memmap_of(var: xr.Variable) -> np.memmap | None:
    data = var._data  # the raw array, without loading a lazy one
    if (
        isinstance(data, np.memmap)
        and data.filename
        and (data.flags.c_contiguous or data.flags.f_contiguous)
    ):
        return data
    return None


def _detach_memmaps(obj: Any) -> Any:
    """Replace memory-mapped data by re-open recipes (so pickling copies no data)."""
    variables = all_variables(obj)
    recipes = {}
    for k, var in enumerate(variables):
        mm = _memmap_of(var)
        if mm is not None:
            recipes[k] = _MemmapRecipe(mm)
    if not recipes:
        return obj
    obj = obj.copy(deep=False)
    targets = all_variables(obj)
    for k, recipe in recipes.items():
        targets[k]._data = np.empty((0,) * targets[k].ndim, dtype=recipe.dtype)
    return (obj, recipes)


def _attach_memmaps(packed: Any) -> Any:
    if not isinstance(packed, tuple):
        return packed
    obj, recipes = packed
    targets = all_variables(obj)
    for k, recipe in recipes.items():
        targets[k]._data = recipe.open()
    return obj


def _writable(values: np.ndarray) -> np.ndarray:
    """A sample a training loop may change: a read-only view of the source (an
    in-memory patch) is copied; a patch read from a file is fresh already."""
    values = np.asarray(values)
    return values if values.flags.writeable else values.copy()
