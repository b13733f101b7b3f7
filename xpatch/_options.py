"""The options of ``apply`` and ``aggregator``, defined and validated once.

The accessor's keyword arguments arrive here and leave as one frozen object that
every internal layer receives whole (in the spirit of flox's ``ReindexStrategy``):
no layer re-spells them, and each is checked before any work starts.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xpatch._dtypes import DEFAULT
from xpatch._validate import dim_name, dim_names, entries, flag, positive_int
from xpatch.errors import DimensionError, PatchError
from xpatch.weights import WeightsLike

__all__ = ["ApplyOptions", "BlendOptions"]

Chunks = int | Mapping[Hashable, Any] | None


@dataclass(frozen=True)
class BlendOptions:
    """How results are blended into the output (``aggregator`` and ``apply`` alike).

    Parameters
    ----------
    weights : str, Kernel, array-like or callable, default: "gaussian"
    chunks : int or mapping, optional
    on_chunk : callable, optional
    fill_value : scalar, optional
    output_dims : sequence of hashable, or mapping of output name to dims, optional
        Dims of a bare-array result for one window; a mapping names the dims of each
        bare array among several outputs (kept as ``per_output_dims``).
    output_names : sequence of hashable, optional
        Names of the outputs of a ``func`` returning a tuple (see :mod:`xpatch._outputs`).

    Examples
    --------
    >>> BlendOptions(weights="mean", chunks=64).chunks
    64
    >>> BlendOptions(on_chunk=3)
    Traceback (most recent call last):
    ...
    TypeError: on_chunk must be callable, got int
    """

    weights: WeightsLike = "gaussian"
    chunks: Chunks = None
    on_chunk: Callable[[Any], Any] | None = None
    fill_value: Any = DEFAULT
    output_dims: tuple[Hashable, ...] | None = None
    output_names: tuple[Hashable, ...] | None = None
    per_output_dims: dict[Hashable, tuple[Hashable, ...]] | None = None

    def __post_init__(self) -> None:
        if self.on_chunk is not None and not callable(self.on_chunk):
            raise TypeError(f"on_chunk must be callable, got {type(self.on_chunk).__name__}")
        if self.fill_value is not DEFAULT:
            value = np.asarray(self.fill_value)
            if value.ndim != 0 or value.dtype.kind not in "biufc":
                raise PatchError(f"fill_value must be a number (or NaN), got {self.fill_value!r}")
        if isinstance(self.output_dims, Mapping):  # per output (several outputs)
            object.__setattr__(self, "per_output_dims", _per_output_dims(self.output_dims))
            object.__setattr__(self, "output_dims", None)
        elif self.output_dims is not None:
            dims = dim_names(self.output_dims, "output_dims", "('class', 'y', 'x')")
            object.__setattr__(self, "output_dims", dims)
        if self.output_names is not None:
            names = _output_names(self.output_names, self.per_output_dims)
            object.__setattr__(self, "output_names", names)

    def check_spatial(self, dims: Sequence[Hashable]) -> None:
        """``output_dims`` (each entry of a mapping) must hold every spatial dim."""
        named = {"": self.output_dims} if self.output_dims is not None else {}
        named.update({f"[{k!r}]": v for k, v in (self.per_output_dims or {}).items()})
        for key, given in named.items():
            missing = [d for d in dims if d not in given]
            if missing:
                raise DimensionError(f"output_dims{key} {given} lacks the spatial dims {missing}")


@dataclass(frozen=True)
class ApplyOptions:
    """Everything ``apply`` is asked to do besides the grid, validated once.

    Built by :meth:`make` where the accessor's arguments arrive, then passed down
    whole to the eager driver, the dask graph builder and the store.

    Attributes
    ----------
    blend : BlendOptions
        How results are blended; its ``output_dims`` are one window's.
    batch_size : int or None
    batch_dim : hashable
    batch_output_dims : tuple of hashable or None
        With ``batch_size``: the dims of a bare-array batched result, ``batch_dim``
        where the user put it.
    out, resume, progress, overwrite
        As given to ``apply``.
    scale : dict or None
        Output elements per input element per spatial dim, as given to ``apply``;
        None: found from the first result.
    template : DataArray, Dataset or None
        An example of ``func``'s result for one patch (dask path: no dry call).
    """

    blend: BlendOptions = field(default_factory=BlendOptions)
    batch_size: int | None = None
    batch_dim: Hashable = "patch"
    batch_output_dims: tuple[Hashable, ...] | None = None
    out: Any = None
    resume: bool = False
    progress: bool = False
    overwrite: bool = False
    scale: dict[Hashable, Any] | None = None
    template: Any = None

    @classmethod
    def make(
        cls,
        source_dims: Sequence[Hashable],
        func: Any,
        *,
        weights: WeightsLike,
        batch_size: Any,
        batch_dim: Hashable,
        output_dims: Sequence[Hashable] | None,
        chunks: Chunks,
        on_chunk: Callable[[Any], Any] | None,
        fill_value: Any,
        out: Any,
        resume: bool,
        progress: bool,
        overwrite: bool = False,
        scale: dict[Hashable, Any] | None = None,
        template: Any = None,
        output_names: Sequence[Hashable] | None = None,
    ) -> ApplyOptions:
        """Validate the arguments of ``apply`` for a source with ``source_dims``.

        Examples
        --------
        >>> opts = ApplyOptions.make(("y", "x"), abs, weights="mean", batch_size=4,
        ...     batch_dim="patch", output_dims=("patch", "y", "x"), chunks=None,
        ...     on_chunk=None, fill_value=DEFAULT, out=None, resume=False, progress=False)
        >>> opts.blend.output_dims, opts.batch_output_dims
        (('y', 'x'), ('patch', 'y', 'x'))
        """
        if not callable(func):
            raise TypeError(f"func must be callable, got {type(func).__name__}")
        resume = flag(resume, "resume")
        progress = flag(progress, "progress")
        overwrite = flag(overwrite, "overwrite")
        batch_dim = dim_name(batch_dim, "batch_dim")
        if batch_size is not None:
            batch_size = positive_int(batch_size, "batch_size")
            if batch_dim in source_dims:
                raise DimensionError(
                    f"batch_dim {batch_dim!r} is already a dim of the array {tuple(source_dims)};"
                    " choose another name"
                )
        if out is None and resume:
            raise PatchError("resume=True needs out=, the zarr store of the interrupted run")
        batched = None
        if output_dims is not None and not isinstance(output_dims, Mapping):
            example = (
                f"({batch_dim!r}, 'y', 'x')" if batch_size is not None else "('class', 'y', 'x')"
            )
            output_dims = dim_names(output_dims, "output_dims", example)
            if batch_size is not None:
                if batch_dim not in output_dims:
                    raise DimensionError(
                        f"output_dims {output_dims} must name the batch dim {batch_dim!r} when"
                        " batch_size is given"
                    )
                batched = output_dims
                output_dims = tuple(d for d in output_dims if d != batch_dim)
        blend = BlendOptions(
            weights=weights,
            chunks=chunks,
            on_chunk=on_chunk,
            fill_value=fill_value,
            output_dims=output_dims,
            output_names=output_names,
        )
        several = isinstance(template, (tuple, Mapping))  # (made a Dataset by _outputs)
        if template is not None and not hasattr(template, "dims") and not several:
            raise TypeError(
                "template must be a DataArray or Dataset like func's result for one patch"
                f" (its spatial sizes do not matter), got {type(template).__name__}"
            )
        return cls(
            blend, batch_size, batch_dim, batched, out, resume, progress, overwrite, scale, template
        )


def _per_output_dims(value: Mapping[Any, Any]) -> dict[Hashable, tuple[Hashable, ...]]:
    """``output_dims`` given per output: name -> dims, each a valid sequence of dim names.

    Examples
    --------
    >>> _per_output_dims({"prob": ("class", "y", "x"), "unc": ["y", "x"]})
    {'prob': ('class', 'y', 'x'), 'unc': ('y', 'x')}
    """
    return {
        name: dim_names(dims, f"output_dims[{name!r}]", "('class', 'y', 'x')")
        for name, dims in value.items()
    }


def _output_names(value: Any, per_output: Mapping[Hashable, Any] | None) -> tuple[Hashable, ...]:
    """``output_names``: distinct names, one per output of a tuple; the keys of a
    per-output ``output_dims`` must be among them.

    Examples
    --------
    >>> _output_names(["prob", "unc"], None)
    ('prob', 'unc')
    >>> _output_names("prob", None)
    Traceback (most recent call last):
    ...
    TypeError: output_names must be a sequence of names, ...; got 'prob' (str)
    """
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        raise TypeError(
            "output_names must be a sequence of names, one per output of func, e.g."
            f" output_names=('prob', 'unc'); got {value!r} ({type(value).__name__})"
        )
    names = entries(value, "output_names", "a name")
    repeated = sorted({str(n) for i, n in enumerate(names) if n in names[:i]})
    if repeated:
        raise PatchError(
            f"output_names {names!r} repeats {', '.join(repeated)}: each output needs its own name"
        )
    unknown = [k for k in per_output or {} if k not in names]
    if unknown:
        raise PatchError(
            f"output_dims names the outputs {unknown}, which are not in output_names {names!r}"
        )
    return names
