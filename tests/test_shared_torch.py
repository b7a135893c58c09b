"""Tests of space_torch_bridge.shared.LatentSpace: torch tensors in and out over SharedSpace."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from space_jax.shared import ProjectionConfig, SharedSpace
from space_torch_bridge.shared import LatentSpace

# The shapes and config of test_shared's TINY problem: one compiled training loop for both.
CONFIG = ProjectionConfig(n_epochs=5, optimizer="sgd")


def aligned(dtype=torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(60, 2, generator=gen, dtype=torch.float64)
    data = {}
    for name, n in (("m0", 3), ("m1", 5)):
        mix = torch.randn(2, n, generator=gen, dtype=torch.float64)
        data[name] = (g @ mix + 0.3 * torch.randn(60, n, generator=gen, dtype=torch.float64)).to(
            dtype
        )
    return data


def latent_space(data: dict, dim: int = 2) -> LatentSpace:
    space = LatentSpace(dim)
    for name, x in data.items():
        space.register(name, x.shape[1])
    return space


def test_latent_space_matches_shared_space_and_keeps_dtypes():
    data = aligned()
    space = latent_space(data)
    history = space.train_projections(data, CONFIG)
    assert isinstance(history, torch.Tensor) and history.shape == (5,)
    assert history.dtype == torch.float32

    reference = SharedSpace(2).register("m0", 3).register("m1", 5)
    reference = reference.train({m: x.numpy() for m, x in data.items()}, CONFIG)
    x = data["m0"][:4]
    z = space.project("m0", x)
    assert isinstance(z, torch.Tensor) and z.dtype == torch.float32 and z.shape == (4, 2)
    np.testing.assert_allclose(z.numpy(), reference.project("m0", x.numpy()), rtol=1e-6)
    back = space.retrieve("m1", z)
    assert back.shape == (4, 5) and back.dtype == torch.float32
    np.testing.assert_allclose(
        space.translate("m0", "m1", x).numpy(), back.numpy(), rtol=1e-5, atol=1e-6
    )
    assert space.project("m0", x[0]).shape == (2,)
    assert space.names == ("m0", "m1") and space.dim == 2 and "dim=2" in repr(space)


def test_float64_tensors_stay_float64_without_touching_the_global_flag():
    x64_before = jax.config.read("jax_enable_x64")
    data = aligned(torch.float64)
    space = latent_space(data)
    history = space.train_projections(data, CONFIG)
    assert history.dtype == torch.float64
    assert space.space.params["m0"]["projection"].dtype == np.float64
    x = data["m0"][:3]
    z = space.project("m0", x)
    assert z.dtype == torch.float64
    p = {k: np.asarray(v) for k, v in space.space.params["m0"].items()}
    expected = ((x.numpy() - p["mean"]) / p["scale"]) @ p["projection"]
    np.testing.assert_allclose(z.numpy(), expected, rtol=1e-12)
    # float32 features against float64 parameters: computed in float64, returned as float32.
    assert space.project("m0", x.float()).dtype == torch.float32
    assert jax.config.read("jax_enable_x64") == x64_before


def test_register_refuses_a_name_twice_unless_replaced():
    space = LatentSpace(2)
    space.register("a", 3)
    with pytest.raises(ValueError, match="model 'a' is already registered"):
        space.register("a", 4)
    space.register("a", 4, replace=True)
    assert space.input_dims == {"a": 4}


def test_errors_name_the_model():
    data = aligned()
    space = latent_space(data)
    with pytest.raises(KeyError, match="model 'zz' is not registered"):
        space.project("zz", data["m0"])
    with pytest.raises(ValueError, match=r"project\('m1'\): expected features of shape \(5,\)"):
        space.project("m1", data["m0"])
    with pytest.raises(ValueError, match="mismatched sample counts"):
        space.train_projections({"m0": data["m0"], "m1": data["m1"][:10]})
    with pytest.raises(ValueError, match=r"at least two models"):
        space.train_projections({"m0": data["m0"]})
    with pytest.raises(TypeError, match=r"data\['m1'\]: expected a torch.Tensor"):
        space.train_projections({"m0": data["m0"], "m1": data["m1"].numpy()})
    bad = data["m1"].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"data\['m1'\]: contains NaN or infinity"):
        space.train_projections({"m0": data["m0"], "m1": bad})


def test_save_and_load_round_trip(tmp_path):
    data = aligned()
    space = latent_space(data)
    space.train_projections(data, CONFIG)
    path = tmp_path / "latent.npz"
    space.save(path)
    loaded = LatentSpace.load(path)
    assert loaded.names == space.names and loaded.dim == space.dim
    torch.testing.assert_close(
        loaded.translate("m1", "m0", data["m1"]),
        space.translate("m1", "m0", data["m1"]),
        rtol=0,
        atol=0,
    )
    with pytest.raises(TypeError, match="expected a space_jax.SharedSpace"):
        LatentSpace.from_space("not a space")
