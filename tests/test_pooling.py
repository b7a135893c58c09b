"""Pooling and the quantity registry: parity with spacelearn, decorators, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spacelearn import data as ref_data

import space_jax as sj


@settings(max_examples=30, deadline=None)
@given(
    shape=st.sampled_from([(3, 17), (2, 5), (2, 1, 13, 11), (1, 3, 4, 4), (2, 2, 3, 7)]),
    n=st.integers(1, 9),
    mode=st.sampled_from(["avg", "max"]),
    seed=st.integers(0, 1000),
)
def test_pool_matches_torch_adaptive_pooling(shape, n, mode, seed):
    # Windows include the upsampling case n > L, where bins repeat samples.
    x = np.random.default_rng(seed).normal(size=shape)
    with jax.enable_x64(True):
        got = sj.pool(jnp.asarray(x), n, mode)
    want = ref_data.pool(torch.from_numpy(x), n, mode).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


def test_pool_jits_vmaps_and_differentiates():
    x = jnp.arange(2 * 1 * 6 * 6, dtype=jnp.float32).reshape(2, 1, 6, 6)
    f = jax.jit(lambda a: sj.pool(a, 3))
    np.testing.assert_allclose(f(x), sj.pool(x, 3))
    per_sample = jax.vmap(lambda a: sj.pool(a[None], 2)[0])(x)
    np.testing.assert_allclose(per_sample, sj.pool(x, 2))
    g = jax.grad(lambda a: sj.pool(a, 3, "avg").sum())(x)
    np.testing.assert_allclose(g, jnp.full_like(x, 1 / 4))


def test_compute_q_injects_only_declared_arguments():
    calls = {}

    def field(u: jax.Array):
        calls["field"] = True
        return u

    def energy(u: jax.Array, dx: float):
        return (u**2).sum(axis=(-1, -2)) * dx

    registry = sj.compute_Q(field, energy=energy, scaled=lambda u, dx: u * dx)
    u = jnp.ones((2, 1, 4, 4))
    out = registry(u=u, dx=0.5, unused=3)
    assert list(out) == ["field", "energy", "scaled"] and calls["field"]
    np.testing.assert_allclose(out["energy"], jnp.full((2, 1), 8.0))


def test_compute_q_rejects_conflicting_annotations():
    def a(u: jax.Array): ...

    def b(u: int): ...

    with pytest.raises(TypeError, match="parameter 'u' is annotated .* by 'a' but .* by 'b'"):
        sj.compute_Q(a, b)
    with pytest.raises(TypeError, match="'x' is not callable"):
        sj.compute_Q(x=3)


def test_input_to_quantity_pools_every_result():
    pipeline = sj.input_to_quantity(2, "max", field=lambda u: u, series=lambda u: u.reshape(3, -1))
    u = jnp.arange(3 * 16, dtype=jnp.float32).reshape(3, 1, 4, 4)
    out = pipeline(u=u)
    assert out["field"].shape == (3, 1, 2, 2) and out["series"].shape == (3, 2)
    np.testing.assert_allclose(out["field"], sj.pool(u, 2, "max"))
    with pytest.raises(ValueError, match="mode: expected one of"):
        sj.input_to_quantity(2, "median", f=lambda u: u)


def test_ensure_dim_expands_arrays_of_any_library():
    @sj.ensure_dim(dims=4, targets=["a"])
    def shapes(x, a=None, b=None):
        return x.shape, a.shape, b.shape

    xs, a_shape, b_shape = shapes(jnp.ones((5, 5)), a=np.ones((5,)), b=torch.ones(2, 2))
    assert xs == (1, 1, 5, 5) and a_shape == (1, 1, 1, 5) and tuple(b_shape) == (2, 2)
    bare = sj.ensure_dim(lambda t: t.shape, dims=3)
    assert tuple(bare(torch.ones(4))) == (1, 1, 4)


def test_to_device_moves_arrays():
    @sj.to_device(device="cpu")
    def where(x, y=None):
        return x.devices(), y

    devices, y = where(np.ones(3), y="label")
    assert devices == {jax.devices("cpu")[0]} and y == "label"


def test_pool_bad_input():
    with pytest.raises(ValueError, match=r"x: expected 2 dims \(B, S\) or 4 dims"):
        sj.pool(jnp.ones((2, 3, 4)), 2)
    with pytest.raises(ValueError, match="mode: expected one of"):
        sj.pool(jnp.ones((2, 3)), 2, "mean")
    with pytest.raises(ValueError, match="n_bins: expected an int >= 1, got 0"):
        sj.pool(jnp.ones((2, 3)), 0)
    with pytest.raises(TypeError, match="x: expected a floating-point array"):
        sj.pool(jnp.ones((2, 3), jnp.int32), 2)
