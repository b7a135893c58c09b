"""The Flax NNX helper: state, refresh, loss, and no recompilation inside nnx.jit."""

from __future__ import annotations

import contextlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import problem
from flax import nnx

import space_jax as sj
from space_jax.nnx import SpaceRegularizer, SpaceState

K = {"field": 3, "energy": 2}
SHAPES = {"field": (1, 4, 4), "energy": (3,)}


def data(seed=0, B=64, D=16):
    Z, Y = problem(seed, B=B, D=D, dtype=np.float32)
    return jnp.asarray(Z), {q: jnp.asarray(y) for q, y in Y.items()}


@contextlib.contextmanager
def count_compilations():
    """Counts XLA backend compilations (every jit cache miss compiles once)."""
    events = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(kwargs.get("fun_name", ""))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_state_shapes_follow_solve_subspaces():
    reg = SpaceRegularizer(16, SHAPES, k={"field": 3, "energy": 5})
    W = reg.current().W
    # energy has m=3 target columns: at most 3 directions, as solve_subspaces gives.
    assert W["field"].shape == (3, 16) and W["energy"].shape == (3, 16)
    assert reg.current().A["field"].shape == (3, 16)
    assert int(reg.refreshes[...]) == 0
    assert isinstance(reg.space, SpaceState) and not isinstance(reg.space, nnx.Param)


def test_refresh_and_loss_match_the_functions():
    Z, Y = data(0)
    reg = SpaceRegularizer(16, SHAPES, k=K)
    drift = reg.refresh(Z, Y)
    want = sj.solve_subspaces(Z, Y, k=K)
    chex.assert_trees_all_close(reg.current().W, want.W, atol=1e-5)
    chex.assert_trees_all_close(reg.current().A, want.A, atol=1e-4)
    chex.assert_trees_all_close(drift, {"field": 0.0, "energy": 0.0})
    # First refresh: W_prev is the new basis, so the stability term is 0. The jitted refresh and
    # the eager solve differ by float32 rounding in the SVD (seen: 5e-7), hence atol as for W.
    chex.assert_trees_all_close(reg.W_prev.get_value(), want.W, atol=1e-5)

    Z2, Y2 = data(1)
    drift = reg.refresh(Z2, Y2)
    new = sj.solve_subspaces(Z2, Y2, k=K)
    chex.assert_trees_all_close(reg.W_prev.get_value(), want.W, atol=1e-6)
    for q in K:
        expected = sj.subspace_change(want.W[q], new.W[q])["mean_angle_deg"]
        np.testing.assert_allclose(drift[q], expected, rtol=1e-4, atol=1e-3)
    weights = sj.LossWeights(0.5, 2.0, 0.1, 3.0)
    reg.set_weights(weights)
    got = reg.loss(Z, Y)
    expected = sj.combined_loss(Z, new.W, new.A, Y, want.W, weights=weights)
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    terms = reg.terms(Z, Y)
    assert float(terms["stability"]) > 0
    total = sum(w * terms[t] for w, t in zip(weights, terms, strict=True))
    np.testing.assert_allclose(got, total, rtol=1e-4)
    loss, both = reg.loss_and_terms(Z, Y)
    np.testing.assert_allclose(loss, got, rtol=1e-4)
    chex.assert_trees_all_close(both, terms)
    traced = jax.jit(lambda w: reg.loss(Z, Y, weights=w))(sj.LossWeights(1.0, 0.0, 0.0, 0.0))
    np.testing.assert_allclose(traced, terms["alignment"], rtol=1e-4)


def test_from_reference_is_refreshed():
    Z, Y = data(2)
    reg = SpaceRegularizer.from_reference(Z, Y, k=K)
    assert int(reg.refreshes[...]) == 1
    want = sj.solve_subspaces(Z, Y, k=K)
    # float32, jitted refresh against eager solve: equal up to rounding (one ulp seen).
    np.testing.assert_allclose(
        reg.loss(Z, Y), sj.combined_loss(Z, want.W, want.A, Y, want.W), rtol=1e-5
    )


def test_refresh_with_active_k_pads_with_zero_rows():
    Z, Y = data(3)
    reg = SpaceRegularizer(16, SHAPES, k=3)
    reg.refresh(Z, Y, jnp.asarray(2))
    W = reg.current().W
    for q in W:
        assert np.all(np.asarray(W[q][2:]) == 0) and np.any(np.asarray(W[q][:2]) != 0)
    want = sj.solve_subspaces(Z, Y, k=2)
    np.testing.assert_allclose(
        reg.loss(Z, Y), sj.combined_loss(Z, want.W, want.A, Y, want.W), rtol=1e-4
    )


def test_bad_input():
    with pytest.raises(ValueError, match="target_shapes"):
        SpaceRegularizer(16, {})
    with pytest.raises(TypeError, match="latent_dim"):
        SpaceRegularizer(16.0, SHAPES)
    reg = SpaceRegularizer(16, SHAPES, k=K)
    Z, Y = data(0)
    with pytest.raises(ValueError, match="energy"):
        reg.refresh(Z, {"field": Y["field"], "energy": Y["energy"][:, :1]})


class Encoder(nnx.Module):
    def __init__(self, n_in, latent_dim, rngs):
        self.linear = nnx.Linear(n_in, latent_dim, rngs=rngs)
        self.space = SpaceRegularizer(latent_dim, SHAPES, k=K)

    def __call__(self, x):
        return jnp.tanh(self.linear(x))


def test_inside_nnx_jit_refresh_does_not_recompile():
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(8, 64, 12)), jnp.float32)
    Ys = [
        {
            "field": jnp.asarray(np.tanh(x[:, :4]) @ rng.normal(size=(4, 16)), jnp.float32).reshape(
                64, 1, 4, 4
            ),
            "energy": jnp.asarray(np.asarray(x[:, 4:7]) ** 2, jnp.float32),
        }
        for x in np.asarray(X)
    ]
    model = Encoder(12, 10, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    traces = {"step": 0, "refresh": 0}

    @nnx.jit
    def refresh(model, x, y):
        traces["refresh"] += 1
        return model.space.refresh(model(x), y)

    @nnx.jit
    def step(model, optimizer, x, y):
        traces["step"] += 1

        def loss_fn(model):
            return model.space.loss(model(x), y)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    weights = [sj.LossWeights(1.0, 1.0, 1.0, 1.0), sj.LossWeights(2.0, 0.5, 0.0, 1.0)]
    refresh(model, X[0], Ys[0])
    step(model, optimizer, X[0], Ys[0])
    before = jax.tree_util.tree_map(np.asarray, model.space.current().W)
    losses = []
    with count_compilations() as compiled:
        for i in range(1, 8):
            if i % 2 == 0:
                refresh(model, X[i], Ys[i])
                model.space.set_weights(weights[(i // 2) % 2])
            losses.append(float(step(model, optimizer, X[i], Ys[i])))
    assert traces == {"step": 1, "refresh": 1}
    assert compiled == [], f"recompiled: {compiled}"
    assert int(model.space.refreshes[...]) == 4
    assert np.all(np.isfinite(losses))
    after = model.space.current().W
    assert any(not np.allclose(before[q], after[q]) for q in K)
    # The counter does see a recompilation: a new batch size is a new program.
    with count_compilations() as compiled:
        step(model, optimizer, X[0][:32], {q: v[:32] for q, v in Ys[0].items()})
    assert compiled and traces["step"] == 2
    # The optimizer holds moments for the parameters only.
    assert jax.tree_util.tree_leaves(nnx.state(optimizer, SpaceState)) == []
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    moments = jax.tree_util.tree_leaves(nnx.state(optimizer, nnx.OptVariable))
    assert sum(x.size for x in moments) == 2 * n_params  # Adam's mu and nu


def test_training_reduces_the_space_loss():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(128, 12)), jnp.float32)
    y = {
        "field": jnp.asarray(np.tanh(np.asarray(x[:, :4])) @ rng.normal(size=(4, 16)), jnp.float32),
        "energy": jnp.asarray(np.asarray(x[:, 4:7]) ** 2, jnp.float32),
    }
    y["field"] = y["field"].reshape(128, 1, 4, 4)
    model = Encoder(12, 10, nnx.Rngs(1))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def epoch(model, optimizer):
        model.space.refresh(model(x), y)

        for _ in range(10):
            grads = nnx.grad(lambda m: m.space.loss(m(x), y))(model)
            optimizer.update(model, grads)
        return model.space.loss(model(x), y)

    losses = [float(epoch(model, optimizer)) for _ in range(5)]
    assert losses[-1] < losses[0]
