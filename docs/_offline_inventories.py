"""Small intersphinx inventories used when the real ones cannot be fetched.

``conf.py`` points each intersphinx project at its online ``objects.inv`` first and at
a file written from this table second. Online, Sphinx uses the full inventory (and
caches it); offline (CI machines reach package registries only), it falls back to
these few entries, the objects the guide and the docstrings link to, so the build
neither fails under ``-W`` nor loses those links.

Each entry is ``(name, "domain:role", path relative to the project's root URL)``,
where ``$`` in the path stands for the name.
"""

from __future__ import annotations

import zlib
from pathlib import Path

ENTRIES: dict[str, list[tuple[str, str, str]]] = {
    "python": [
        ("ValueError", "py:exception", "library/exceptions.html#ValueError"),
        ("TypeError", "py:exception", "library/exceptions.html#TypeError"),
        ("ImportError", "py:exception", "library/exceptions.html#ImportError"),
        ("collections.abc.Sequence", "py:class", "library/collections.abc.html#$"),
        ("collections.abc.Mapping", "py:class", "library/collections.abc.html#$"),
        ("pathlib.Path", "py:class", "library/pathlib.html#$"),
    ],
    "numpy": [
        ("numpy.ndarray", "py:class", "reference/generated/$.html"),
        ("numpy.pad", "py:function", "reference/generated/$.html"),
        ("numpy.argmax", "py:function", "reference/generated/$.html"),
    ],
    "scipy": [
        ("scipy.ndimage.gaussian_filter", "py:function", "reference/generated/$.html"),
        ("scipy.ndimage.median_filter", "py:function", "reference/generated/$.html"),
        ("scipy.ndimage.uniform_filter", "py:function", "reference/generated/$.html"),
    ],
    "xarray": [
        (name, role, "generated/$.html")
        for name, role in [
            ("xarray.DataArray", "py:class"),
            ("xarray.Dataset", "py:class"),
            ("xarray.DataArray.rolling", "py:method"),
            ("xarray.DataArray.coarsen", "py:method"),
            ("xarray.DataArray.isel", "py:method"),
            ("xarray.DataArray.sel", "py:method"),
            ("xarray.DataArray.argmax", "py:method"),
            ("xarray.DataArray.chunk", "py:method"),
            ("xarray.DataArray.to_zarr", "py:method"),
            ("xarray.Dataset.to_zarr", "py:method"),
            ("xarray.DataArray.to_netcdf", "py:method"),
            ("xarray.apply_ufunc", "py:function"),
            ("xarray.open_dataset", "py:function"),
            ("xarray.open_dataarray", "py:function"),
            ("xarray.open_zarr", "py:function"),
        ]
    ],
    "dask": [
        ("dask.array.Array", "py:class", "generated/$.html"),
        ("dask.array.map_overlap", "py:function", "generated/$.html"),
        ("dask.array.map_blocks", "py:function", "generated/$.html"),
        ("dask.array.overlap.overlap", "py:function", "generated/$.html"),
        ("dask.compute", "py:function", "api.html#$"),
        ("dask.visualize", "py:function", "api.html#$"),
    ],
    "distributed": [
        ("distributed.Client", "py:class", "api.html#$"),
        ("distributed.LocalCluster", "py:class", "api.html#$"),
    ],
    "zarr": [
        ("zarr.open_group", "py:function", "api/zarr/index.html#$"),
        ("zarr.open_array", "py:function", "api/zarr/index.html#$"),
        ("zarr.Array", "py:class", "api/zarr/index.html#$"),
    ],
    "torch": [
        ("torch.utils.data.DataLoader", "py:class", "data.html#$"),
        ("torch.utils.data.Dataset", "py:class", "data.html#$"),
        ("torch.Tensor", "py:class", "tensors.html#$"),
        ("torch.nn.Module", "py:class", "generated/$.html"),
        ("torch.nn.Conv3d", "py:class", "generated/$.html"),
    ],
    "matplotlib": [
        ("matplotlib.axes.Axes", "py:class", "api/_as_gen/$.html"),
        ("matplotlib.patches.Rectangle", "py:class", "api/_as_gen/$.html"),
        ("matplotlib.axes.Axes.imshow", "py:method", "api/_as_gen/$.html"),
    ],
    "rioxarray": [
        ("rioxarray.open_rasterio", "py:function", "rioxarray.html#$"),
        ("rioxarray.raster_array.RasterArray.to_raster", "py:method", "rioxarray.html#$"),
    ],
}


def write(folder: Path) -> dict[str, Path]:
    """Write one ``objects.inv`` (Sphinx inventory version 2) per project into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for project, entries in ENTRIES.items():
        header = (
            "# Sphinx inventory version 2\n"
            f"# Project: {project}\n"
            "# Version: \n"
            "# The remainder of this file is compressed using zlib.\n"
        )
        # "$" stands for the object's name (the format itself expands it only at the end)
        lines = "".join(
            f"{name} {role} 1 {uri.replace('$', name)} -\n" for name, role, uri in entries
        )
        path = folder / f"{project}.inv"
        path.write_bytes(header.encode() + zlib.compress(lines.encode()))
        paths[project] = path
    return paths
