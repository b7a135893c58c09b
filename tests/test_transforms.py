"""Every array function under jax.jit and jax.vmap gives what the eager call gives, per item."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import problem, to_jax

import space_jax as sj

STACK = 3


def stacked():
    items = [to_jax(problem(seed, B=32, D=8, dtype=np.float32)) for seed in range(STACK)]
    Z = jnp.stack([z for z, _ in items])
    Y = {q: jnp.stack([y[q] for _, y in items]) for q in items[0][1]}
    return Z, Y


def item(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def projector_tree(out):
    """Basis-independent view of outputs that contain bases (sign and rotation free)."""
    if isinstance(out, sj.Space):
        return {q: (w.T @ w, a.T @ a) for q, (w, a, _) in out.items()}
    return out


CASES = {
    "solve_subspaces": lambda Z, Y: projector_tree(sj.solve_subspaces(Z, Y, k=2)),
    "subspaces": lambda Z, Y: {q: w.T @ w for q, w in sj.subspaces(Z, Y, 2).items()},
    "principal_directions": lambda Z, Y: {
        q: jnp.outer(w, v) for q, (w, v) in sj.principal_directions(Z, Y).items()
    },
    "fit_decoders": lambda Z, Y: sj.fit_decoders({"energy": jnp.eye(8)[:2]}, Z, Y),
    "singular_values": lambda Z, Y: sj.singular_values(Z),
    "left": lambda Z, Y: jnp.abs(sj.left(Z, solver="eigen")[0][:, :2].T @ Z),
    "pool": lambda Z, Y: sj.pool(Y["field"], 2),
    "explained_rank": lambda Z, Y: sj.explained_rank(Y["energy"], 0.9),
    "subspace_change": lambda Z, Y: sj.subspace_change(
        sj.subspaces(Z, Y, 2)["field"], sj.subspaces(Z[::-1], Y, 2)["field"]
    )["mean_cos_sim"],
    "combined_grad": lambda Z, Y: jax.grad(
        lambda z: sj.combined_loss(
            z,
            {"a": jnp.eye(8)[:2], "b": jnp.eye(8)[2:4]},
            {"a": jnp.ones((2, 3)), "b": jnp.ones((2, 3))},
            {"a": Y["energy"], "b": Y["energy"] ** 2},
            n_dir=4,
        )
    )(Z),
}


@pytest.mark.parametrize("name", list(CASES))
def test_jit_and_vmap_agree_with_eager(name):
    fn = CASES[name]
    Z, Y = stacked()
    batched = jax.jit(jax.vmap(fn))(Z, Y)
    for i in range(STACK):
        eager = fn(Z[i], item(Y, i))
        jax.tree_util.tree_map(
            lambda b, e: np.testing.assert_allclose(b, e, rtol=2e-4, atol=2e-5),
            item(batched, i),
            eager,
        )
