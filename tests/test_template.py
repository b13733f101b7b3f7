"""template=: the layout of func's result told up front, so the dask graph is built
without calling func."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xpatch  # noqa: F401
from xpatch.errors import ResultError

CLASSES = xr.DataArray(np.arange(4.0), dims="class", coords={"class": list("abcd")})


def scene() -> xr.DataArray:
    data = np.random.default_rng(1).random((3, 64, 64)).astype("float32")
    return xr.DataArray(data, dims=("band", "y", "x")).chunk({"y": 32, "x": 32})


class Model:
    def __init__(self):
        self.calls = 0

    def __call__(self, p):
        self.calls += 1
        return (p.mean("band") * CLASSES).transpose("class", "y", "x").astype("float32")


TEMPLATE = xr.DataArray(
    np.zeros((4, 1, 1), "float32"), dims=("class", "y", "x"), coords={"class": list("abcd")}
)


def test_building_calls_func_not_once_and_computing_equals_eager():
    model = Model()
    lazy = scene().patch.apply(model, y=16, x=16, step=12, template=TEMPLATE)
    assert model.calls == 0
    assert lazy.dims == ("class", "y", "x") and lazy.dtype == np.float32
    assert list(lazy["class"].values) == list("abcd")
    eager = scene().compute().patch.apply(Model(), y=16, x=16, step=12)
    np.testing.assert_allclose(lazy.values, eager.values, rtol=1e-6)


def test_template_with_on_chunk_and_scale():
    model = Model()

    def up(p):
        return np.repeat(np.repeat(model(p).values, 2, -2), 2, -1)

    lazy = scene().patch.apply(
        up, y=16, x=16, step=12, scale=2, template=TEMPLATE, output_dims=("class", "y", "x"),
        on_chunk=lambda c: c.argmax("class").astype("uint8"),
    )  # fmt: skip
    assert model.calls == 0
    assert lazy.sizes == {"y": 128, "x": 128} and lazy.dtype == np.uint8
    assert int(lazy.max()) == 3


def test_a_template_that_does_not_match_the_results_is_refused_at_compute():
    wrong = TEMPLATE.isel({"class": slice(0, 2)})
    lazy = scene().patch.apply(Model(), y=16, x=16, step=12, template=wrong)
    with pytest.raises(ResultError):
        lazy.compute()


def test_template_must_be_labeled():
    with pytest.raises(TypeError, match="template must be"):
        scene().patch.apply(Model(), y=16, x=16, template=np.zeros((4, 1, 1)))
