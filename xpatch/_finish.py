"""Finishing a chunk: normalise, fill what no patch covers, run ``on_chunk``.

Built-in weights are final when added (:mod:`xpatch._normalise`), so a finished chunk
only needs its uncovered elements filled. A custom (non-separable) weight, or a
preview with windows missing (``result(partial=True)``), divides by the sum of the
weights actually added first. Elements no patch covers are NaN in the chunk handed
to ``on_chunk`` (never a silent 0) and get ``fill_value`` after it.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import replace

import numpy as np
import xarray as xr

from xpatch._dtypes import DEFAULT, blended_dtype, default_fill, fill
from xpatch._normalise import place
from xpatch._plan import BlendPlan
from xpatch._structure import Meta, ResultSpec, Variables, assemble, spatial_check, split

__all__ = ["ChunkFinisher"]


class ChunkFinisher:
    """Turns a chunk's accumulation buffers into what is written.

    Parameters
    ----------
    plan : BlendPlan
        The grid, chunk layout, weights and options of the run.
    template : Dataset
        The source's coordinates and attributes (cut to each chunk for ``on_chunk``).
    name : hashable, optional
        The input's name, which an unnamed DataArray result takes (not given to the
        chunk ``on_chunk`` sees, whose labels are ``func``'s own).

    Attributes
    ----------
    chunk_template : Dataset or None
        When set, the coordinates ``on_chunk`` sees for every chunk (a dask block's),
        instead of ``template`` cut to the chunk.
    """

    def __init__(self, plan: BlendPlan, template: xr.Dataset, name: Hashable | None) -> None:
        self.plan = plan
        self.dims = plan.grid.dims
        self.template = template
        self.name = name
        self.chunk_template: xr.Dataset | None = None

    def __call__(
        self,
        cpos: tuple[int, ...],
        buffers: dict[Hashable, np.ndarray],
        spec: ResultSpec,
        weight_sum: np.ndarray | None,
        added: np.ndarray | None,
    ) -> tuple[Variables, Meta]:
        """The finished chunk ``cpos`` from its ``buffers`` (which it may change in place).

        ``weight_sum``: the summed custom weights of the chunk; ``added``: the mask
        of windows added, for a preview with some missing.
        """
        options = self.plan.options
        region = self.plan.layout.region(cpos)
        uncovered = self._normalise(cpos, buffers, spec, weight_sum, added)
        variables: Variables = {}
        for name, buf in buffers.items():
            dims = spec.dims[name]
            if uncovered is not None:
                fill(buf, uncovered, dims, self.dims, np.nan)
            variables[name] = (dims, buf.astype(blended_dtype(spec.dtype[name]), copy=False))
        meta = spec.meta
        if options.on_chunk is not None:
            variables, meta = self._post_process(region, variables, meta)
            if uncovered is not None or options.fill_value is not DEFAULT:
                variables = {k: (d, np.array(v, copy=True)) for k, (d, v) in variables.items()}
        if uncovered is not None:
            for dims, data in variables.values():
                value = options.fill_value
                fill(
                    data,
                    uncovered,
                    dims,
                    self.dims,
                    default_fill(data.dtype) if value is DEFAULT else value,
                )
        return variables, meta

    def _post_process(
        self, region: dict[Hashable, slice], variables: Variables, meta: Meta
    ) -> tuple[Variables, Meta]:
        """``on_chunk`` on the labeled chunk; its result split and checked."""
        where = ", ".join(f"{d}={s.start}:{s.stop}" for d, s in region.items())
        template = self.chunk_template
        if template is None:
            template = self.template.isel(region, missing_dims="ignore")
        # on_chunk sees func's own labels: not the input's name, which would stick to
        # what it makes (an argmax is not the input's quantity)
        chunk = assemble(variables, meta, template, default_name=None)
        try:
            processed = self.plan.options.on_chunk(chunk)
        except Exception as err:
            err.add_note(f"xpatch: raised by on_chunk for the chunk {where}")
            raise
        dims = next(iter(variables.values()))[0]
        what = f"on_chunk for the chunk {where}"
        variables, labels = split(
            processed, spatial=self.dims, default_dims=dims, output_dims=None, what=what
        )
        spatial_check(variables, {d: s.stop - s.start for d, s in region.items()}, what)
        if labels.from_labeled:  # its name and attrs are final, an unnamed one too
            return variables, replace(labels, final=True)
        return variables, meta if meta.kind == "dataarray" else labels  # bare: func's labels

    def _normalise(
        self,
        cpos: tuple[int, ...],
        buffers: dict[Hashable, np.ndarray],
        spec: ResultSpec,
        weight_sum: np.ndarray | None,
        added: np.ndarray | None,
    ) -> np.ndarray | None:
        """Divide by the weight sum where needed; return the mask of uncovered elements."""
        layout, weights = self.plan.layout, self.plan.weights
        region = list(layout.region(cpos).values())
        if weights.separable and added is None:
            return weights.uncovered(region)  # final weights: nothing to divide
        total = weight_sum
        if weights.separable:
            assert added is not None
            total = weights.added_sum(region, layout.positions_touching(cpos), added)
        if total is None:
            total = np.zeros(layout.chunk_shape(cpos), dtype=np.float32)
        covered = total > 0
        np.divide(1.0, total, out=total, where=covered)  # in place: the sum is done with
        for name, buf in buffers.items():
            buf *= place(total, spec.axes[name], buf.ndim).astype(buf.dtype, copy=False)
        return None if covered.all() else ~covered
