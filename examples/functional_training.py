"""SPACE in plain functional JAX: a parameter pytree, optax, and jitted pure functions.

The same loop as ``space_jax.nnx.SpaceRegularizer``, without Flax: the subspaces are an ordinary
value (a ``space_jax.Space`` pytree) passed to the jitted train step as an argument, so
refreshing them changes values, not shapes, and the step is compiled once.

Run: ``python examples/functional_training.py``
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

import space_jax as sj


def init_params(key, n_in: int, hidden: int, latent_dim: int) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (n_in, hidden)) / jnp.sqrt(n_in),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, latent_dim)) / jnp.sqrt(hidden),
        "b2": jnp.zeros(latent_dim),
    }


def encode(params: dict, x: jax.Array) -> jax.Array:
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def make_data(key, n: int = 1024, n_in: int = 32):
    """Inputs and two side quantities: a linear read-out and a nonlinear 'energy'."""
    x = jax.random.normal(key, (n, n_in))
    mix = jax.random.normal(jax.random.fold_in(key, 1), (n_in, 6)) / jnp.sqrt(n_in)
    y = {"signal": x @ mix, "energy": jnp.sum(x[:, :8] ** 2, axis=1, keepdims=True) / 8}
    return x, y


def main(steps: int = 300, refresh_every: int = 50, seed: int = 0) -> dict:
    key = jax.random.key(seed)
    x, y = make_data(key)
    k = sj.k_per_q(y, 0.9)  # subspace size per quantity, from the targets' spectra
    latent_dim = sj.minimal_latent_dim(k, free_frac=0.3)
    params = init_params(jax.random.fold_in(key, 2), x.shape[1], 64, latent_dim)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    weights = sj.LossWeights(alignment=1.0, disentanglement=1.0, isotropy=0.5, stability=1.0)

    # k is static (it sets shapes): bind it before jitting.
    refresh = jax.jit(functools.partial(sj.solve_subspaces, k=k))

    traces = []

    @jax.jit
    def step(params, opt_state, space, W_prev, x, y):
        traces.append(1)  # runs only while tracing: counts compilations of the step

        def loss_fn(params):
            z = encode(params, x)
            return sj.combined_loss(z, space.W, space.A, y, W_prev, weights=weights)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    space = refresh(encode(params, x), y)
    W_prev = space.W
    first = None
    for i in range(steps):
        if i and i % refresh_every == 0:
            W_prev, space = space.W, refresh(encode(params, x), y)
            drift = {
                q: float(sj.subspace_change(W_prev[q], space.W[q])["mean_angle_deg"]) for q in k
            }
            print(f"step {i:4d}  refreshed, drift (deg): {drift}")
        params, opt_state, loss = step(params, opt_state, space, W_prev, x, y)
        first = float(loss) if first is None else first
    print(f"SPACE loss {first:.4f} -> {float(loss):.4f}; step traced {len(traces)} time(s)")
    return {"first": first, "last": float(loss)}


if __name__ == "__main__":
    main()
