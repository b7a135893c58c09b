"""Sweeps: padded-k invariance under vmap, sweep equals loop, grids and tables."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import problem

import space_jax as sj

K_MAX = 4


def data(seed=0, B=64, D=16):
    Z, Y = problem(seed, B=B, D=D, dtype=np.float32)
    return jnp.asarray(Z), {q: jnp.asarray(y) for q, y in Y.items()}


def losses(Z, space, Y, W_prev=None):
    return {
        "alignment": sj.alignment_loss(Z, space.W, space.A, Y),
        "disentanglement": sj.disentanglement_loss(Z, space.W),
        "isotropy": sj.isotropy_loss(Z, space.W),
        "stability": sj.stability_loss(space.W, W_prev),
        "combined": sj.combined_loss(Z, space.W, space.A, Y, W_prev),
    }


@pytest.mark.parametrize("k", [1, 2, 3])
def test_active_k_equals_the_unpadded_basis(k):
    Z, Y = data(0)
    padded = sj.solve_subspaces(Z, Y, k=K_MAX, active_k=jnp.asarray(k))
    plain = sj.solve_subspaces(Z, Y, k=k)
    for q in plain.W:
        assert padded.W[q].shape[0] == min(K_MAX, Y[q].reshape(64, -1).shape[1])
        np.testing.assert_allclose(padded.W[q][:k], plain.W[q], atol=1e-5)
        np.testing.assert_array_equal(padded.W[q][k:], 0.0)
        np.testing.assert_array_equal(padded.A[q][k:], 0.0)
    Z2, _ = data(1)
    prev_plain = sj.solve_subspaces(Z2, Y, k=k)
    prev_padded = sj.solve_subspaces(Z2, Y, k=K_MAX, active_k=jnp.asarray(k))
    chex.assert_trees_all_close(
        losses(Z, padded, Y, prev_padded.W), losses(Z, plain, Y, prev_plain.W), rtol=2e-4
    )


def test_vmapped_active_k_equals_a_loop_over_k():
    Z, Y = data(2)
    ks = jnp.arange(1, K_MAX + 1)

    def run(k):
        space = sj.solve_subspaces(Z, Y, k=K_MAX, active_k=k)
        return sj.combined_loss(Z, space.W, space.A, Y)

    got = jax.jit(jax.vmap(run))(ks)
    want = []
    for k in range(1, K_MAX + 1):
        space = sj.solve_subspaces(Z, Y, k=k)
        want.append(sj.combined_loss(Z, space.W, space.A, Y))
    np.testing.assert_allclose(got, np.stack(want), rtol=2e-4)


def test_per_quantity_active_k():
    Z, Y = data(3)
    active = {"field": jnp.asarray(2), "energy": jnp.asarray(1)}
    padded = sj.solve_subspaces(Z, Y, k=3, active_k=active)
    plain = sj.solve_subspaces(Z, Y, k={"field": 2, "energy": 1})
    np.testing.assert_allclose(
        sj.combined_loss(Z, padded.W, padded.A, Y),
        sj.combined_loss(Z, plain.W, plain.A, Y),
        rtol=2e-4,
    )


def train_encoder(config, x, y, w0):
    """A short SPACE training run of a linear encoder, for one configuration."""
    tx = optax.adam(config["lr"])
    weights = sj.LossWeights(config["w_align"], 1.0, 0.5, 0.0)
    noise = 0.01 * jax.random.normal(jax.random.key(config["seed"]), w0.shape)
    w = w0 + noise
    space = sj.solve_subspaces(x @ w, y, k=K_MAX, active_k=config["k"])

    def step(carry, _):
        w, state = carry
        loss, g = jax.value_and_grad(
            lambda w: sj.combined_loss(x @ w, space.W, space.A, y, weights=weights)
        )(w)
        updates, state = tx.update(g, state)
        return (optax.apply_updates(w, updates), state), loss

    (w, _), curve = jax.lax.scan(step, (w, tx.init(w)), None, length=25)
    return {"first": curve[0], "last": curve[-1], "w_norm": jnp.linalg.norm(w)}


GRID = {"lr": [1e-3, 1e-2], "w_align": [0.5, 2.0], "k": [1, 3], "seed": [0, 1]}


def inputs():
    Z, Y = data(4, B=48, D=12)
    rng = np.random.default_rng(0)
    w0 = jnp.asarray(rng.normal(size=(12, 10)) / np.sqrt(12), jnp.float32)
    return Z, Y, w0


def test_sweep_equals_loop():
    args = inputs()
    result = sj.sweep(train_encoder, GRID, *args, chunk_size=5)
    assert len(result) == 16
    assert result.config_names == ["lr", "w_align", "k", "seed"]
    assert result.metric_names == ["first", "last", "w_norm"]
    loop = sj.sweep(train_encoder, GRID, *args, vectorize=False)
    for m in result.metric_names:
        np.testing.assert_allclose(result[m], loop[m], rtol=1e-4, atol=1e-6, err_msg=m)
    # And against calling the function by hand, in grid order (last key fastest).
    configs = sj.expand_grid(GRID)
    assert configs[1] == {"lr": 1e-3, "w_align": 0.5, "k": 1, "seed": 1}
    for i in (0, 7, 15):
        c = {n: jnp.asarray(v) for n, v in configs[i].items()}
        want = jax.jit(train_encoder)(c, *args)
        np.testing.assert_allclose(result["last"][i], want["last"], rtol=1e-4)
    assert np.all(result["last"] < result["first"])


def test_chunking_does_not_change_results():
    args = inputs()
    grid = {"lr": [1e-3, 3e-3, 1e-2], "w_align": [1.0], "k": [2], "seed": [0]}
    whole = sj.sweep(train_encoder, grid, *args)
    chunked = sj.sweep(train_encoder, grid, *args, chunk_size=2)  # 2 + 1 padded to 2
    np.testing.assert_allclose(whole["last"], chunked["last"], rtol=1e-5)


def test_static_values_and_zip_mode():
    def fn(config, x):
        scale = {"double": 2.0, "half": 0.5}[config["mode"]]
        return x.sum() * scale * config["a"]

    x = jnp.ones(3)
    result = sj.sweep(fn, {"a": [1.0, 2.0], "mode": ["double", "half"]}, x)
    np.testing.assert_allclose(result["result"], [6.0, 1.5, 12.0, 3.0])
    assert result["mode"] == ["double", "half", "double", "half"]
    zipped = sj.sweep(fn, {"a": [1.0, 2.0], "mode": ["double", "half"]}, x, mode="zip")
    np.testing.assert_allclose(zipped["result"], [6.0, 3.0])
    explicit = sj.sweep(fn, [{"a": 3.0, "mode": "half"}], x)
    np.testing.assert_allclose(explicit["result"], [4.5])


def test_table_helpers():
    def fn(config):
        return {"loss": (config["lr"] - 0.01) ** 2, "vec": jnp.full(2, config["lr"])}

    result = sj.sweep(fn, {"lr": [0.001, 0.01, 0.1]})
    assert result.best("loss")["lr"] == pytest.approx(0.01)
    assert result.best("loss", maximize=True)["lr"] == pytest.approx(0.1)
    rows = result.rows()
    assert rows[0]["lr"] == 0.001 and rows[0]["vec"] == pytest.approx([0.001, 0.001])
    table = result.to_markdown()
    lines = table.splitlines()
    assert lines[0] == "| lr | loss | vec |" and len(lines) == 5
    assert "array(2,)" in lines[2]
    assert result.to_dict()["lr"] == [0.001, 0.01, 0.1]


def test_bad_input():
    with pytest.raises(ValueError, match="mode"):
        sj.expand_grid({"a": [1]}, mode="grid")
    with pytest.raises(ValueError, match="zip"):
        sj.expand_grid({"a": [1, 2], "b": [1]}, mode="zip")
    with pytest.raises(TypeError, match=r"grid\['a'\]"):
        sj.expand_grid({"a": 1.0})
    with pytest.raises(ValueError, match=r"grid\['a'\]"):
        sj.expand_grid({"a": []})
    with pytest.raises(ValueError, match="keys"):
        sj.expand_grid([{"a": 1}, {"b": 2}])
    with pytest.raises(ValueError, match="chunk_size"):
        sj.sweep(lambda c: c["a"], {"a": [1.0]}, chunk_size=0)
    with pytest.raises(TypeError, match="train_fn"):
        sj.sweep(None, {"a": [1.0]})
    with pytest.raises(ValueError, match="hyperparameter"):
        sj.sweep(lambda c: {"a": c["a"]}, {"a": [1.0]})


def test_vmapped_refits_and_loss_gradients_equal_the_loop(dtype):
    """What a vmapped SPACE step computes per configuration (subspace refit from data and from
    moments, sizing, every loss and its gradient) equals the per-configuration loop."""
    Z0, Y0 = problem(3, B=48, D=12, dtype=dtype)
    Z0, Y = jnp.asarray(Z0), {q: jnp.asarray(y) for q, y in Y0.items()}
    names = ("alignment", "disentanglement", "isotropy", "stability", "combined")

    def step(scale, w_iso):
        z = Z0 * scale + 0.1 * scale**2 * jnp.roll(Z0, 1, axis=1)
        space = sj.solve_subspaces(z, Y, k=2)
        prev = sj.solve_subspaces(Z0, Y, k=2).W
        from_moments = sj.solve_subspaces_from_moments(sj.moments(z, Y), k=2)
        weights = sj.LossWeights(1.0, 0.5, w_iso, 1.0)

        def loss(z, name):
            return {
                "alignment": lambda: sj.alignment_loss(z, space.W, space.A, Y),
                "disentanglement": lambda: sj.disentanglement_loss(z, space.W),
                "isotropy": lambda: sj.isotropy_loss(z, space.W),
                "stability": lambda: sj.stability_loss(space.W, prev),
                "combined": lambda: sj.combined_loss(z, space.W, space.A, Y, prev, weights=weights),
            }[name]()

        return {
            "W": space.W,
            "A": space.A,
            "W_moments": from_moments.W,
            "rank": sj.explained_rank_from_gram(z.T @ z, 0.9),
            "losses": {n: loss(z, n) for n in names},
            "grads": {n: jax.grad(lambda z, n=n: loss(z, n))(z) for n in names},
        }

    scales = jnp.asarray([0.5, 2.0], dtype)
    w_iso = jnp.asarray([0.0, 1.0], dtype)

    @jax.jit
    def both(scales, w_iso):
        loop = [step(s, w) for s, w in zip(scales, w_iso, strict=True)]
        return jax.vmap(step)(scales, w_iso), jax.tree_util.tree_map(
            lambda *xs: jnp.stack(xs), *loop
        )

    vmapped, looped = both(scales, w_iso)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    chex.assert_trees_all_close(vmapped, looped, rtol=tol, atol=tol)
    # The gradient of the combined loss depends on the weights: the sweep is not degenerate.
    g = np.asarray(vmapped["grads"]["combined"])
    assert not np.allclose(g[0], g[1])
