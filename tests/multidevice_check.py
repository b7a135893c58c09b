"""SPACE on a batch sharded over a 4-device mesh versus one device.

Run by ``tests/test_multidevice.py`` in a subprocess, because the device count is fixed when
JAX starts (``XLA_FLAGS=--xla_force_host_platform_device_count=4``, which this script also sets
when run by hand). Prints one JSON object: per check, the largest relative difference from the
single-device result and the shardings seen.

    python tests/multidevice_check.py
"""

from __future__ import annotations

import os
import sys

_FLAG = "--xla_force_host_platform_device_count=4"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from conftest import problem  # noqa: E402

import space_jax as sj  # noqa: E402

K = {"field": 3, "energy": 2}


def rel_diff(got, want, *, per_leaf: bool = True) -> float:
    """Largest difference over all leaves, relative to each leaf's largest entry (or to the
    tree's, for parameters such as a bias that the centered losses cannot see)."""
    pairs = [
        (np.asarray(g, np.float64), np.asarray(w, np.float64))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    ]
    tree_scale = max(np.abs(w).max() for _, w in pairs)
    out = 0.0
    for g, w in pairs:
        scale = np.abs(w).max() if per_leaf else tree_scale
        out = max(out, float(np.abs(g - w).max() / max(scale, 1e-30)))
    return out


def basis_free(space, Z) -> dict:
    """Projectors and predictions: independent of the sign and rotation of the bases."""
    Zc = np.asarray(Z, np.float64) - np.asarray(Z, np.float64).mean(0)
    out = {}
    for q in sorted(space.W):
        w, a = np.asarray(space.W[q], np.float64), np.asarray(space.A[q], np.float64)
        out[q] = (w.T @ w, Zc @ w.T @ a)
    return out


def spec(x) -> str:
    return str(getattr(x.sharding, "spec", x.sharding))


def is_batch_sharded(x, mesh) -> bool:
    return x.sharding.is_equivalent_to(NamedSharding(mesh, P("batch")), x.ndim) and (
        len({s.device for s in x.addressable_shards}) == mesh.size
    )


class Encoder(nnx.Module):
    def __init__(self, d_in: int, d_latent: int, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(d_in, 32, rngs=rngs)
        self.out = nnx.Linear(32, d_latent, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def main() -> dict:
    devices = jax.devices()
    # Auto axes: XLA propagates the batch sharding through code written for one device.
    mesh = jax.make_mesh((len(devices),), ("batch",), (AxisType.Auto,))
    batch = NamedSharding(mesh, P("batch"))
    replicated = NamedSharding(mesh, P())
    one = jax.devices()[0]

    Z, Y = problem(0, B=64, D=16, dtype=np.float32)
    Z1, Y1 = jax.device_put((Z, Y), one)
    Zs, Ys = jax.device_put((Z, Y), batch)
    report = {
        "devices": len(devices),
        "input_sharded": is_batch_sharded(Zs, mesh)
        and all(is_batch_sharded(y, mesh) for y in Ys.values()),
    }

    # 1. solve_subspaces: jitted once, run on each placement; SPMD partitions it.
    solve = jax.jit(lambda Z, Y: sj.solve_subspaces(Z, Y, k=K))
    space1, spaces = solve(Z1, Y1), solve(Zs, Ys)
    report["solve_subspaces"] = rel_diff(basis_free(spaces, Z), basis_free(space1, Z))

    # 2. moments of the sharded batch: local products, then a cross-device reduction.
    moments = jax.jit(sj.moments)
    hlo = moments.lower(Zs, Ys).compile().as_text()
    m1, ms = moments(Z1, Y1), moments(Zs, Ys)
    report["moments"] = rel_diff(ms, m1)
    report["moments_all_reduce"] = "all-reduce" in hlo
    from_m = sj.solve_subspaces_from_moments(ms, K)
    report["solve_from_moments"] = rel_diff(basis_free(from_m, Z), basis_free(space1, Z))

    # 3. gradient of the combined loss with respect to the sharded latents.
    W_prev = {q: w + 0.01 for q, w in space1.W.items()}

    @jax.jit
    def grad(Z, Y, space):
        return jax.value_and_grad(sj.combined_loss)(Z, space.W, space.A, Y, W_prev)

    (loss1, g1), (losss, gs) = (
        grad(Z1, Y1, space1),
        grad(Zs, Ys, jax.device_put(space1, replicated)),
    )
    report["loss"] = rel_diff(losss, loss1)
    report["grad"] = rel_diff(gs, g1)
    report["grad_sharding"] = spec(gs)
    report["grad_batch_sharded"] = is_batch_sharded(gs, mesh)

    # 3b. jax.make_mesh's default Explicit axes type-check every sharding; SPACE's batch
    #     contractions run there through jax.sharding.auto_axes.
    explicit = jax.make_mesh((len(devices),), ("batch",), (AxisType.Explicit,))
    with jax.set_mesh(explicit):
        Ze, Ye = jax.device_put((Z, Y), NamedSharding(explicit, P("batch")))
        space_e = jax.device_put(space1, NamedSharding(explicit, P()))
        loss_e = jax.sharding.auto_axes(
            lambda Z, Y, space: sj.combined_loss(Z, space.W, space.A, Y, W_prev),
            out_sharding=P(),
        )
        ge = jax.jit(jax.grad(loss_e))(Ze, Ye, space_e)
        report["grad_explicit"] = rel_diff(ge, g1)
        report["grad_explicit_type"] = str(jax.typeof(ge))

    # 4. a data-parallel Flax training step: parameters replicated, the batch sharded; the
    #    subspaces are refreshed inside the step from the (detached) latents.
    rng = np.random.default_rng(1)
    X = rng.normal(size=(64, 8)).astype(np.float32)
    Y_train = {q: y + X[:, :1].reshape((64,) + (1,) * (y.ndim - 1)) for q, y in Y.items()}
    graphdef, params = nnx.split(Encoder(8, 16, nnx.Rngs(0)))
    tx = optax.sgd(0.05, momentum=0.9)

    def loss_fn(params, x, y):
        z = nnx.merge(graphdef, params)(x)
        space = sj.solve_subspaces(jax.lax.stop_gradient(z), y, k=K)
        return sj.combined_loss(z, space.W, space.A, y, n_dir=8)

    @jax.jit
    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def train(params, x, y, placement):
        params = jax.device_put(params, placement)
        opt_state = jax.device_put(tx.init(params), placement)
        losses = []
        for _ in range(3):
            params, opt_state, loss = train_step(params, opt_state, x, y)
            losses.append(float(loss))
        return params, losses

    p1, losses1 = train(params, *jax.device_put((X, Y_train), one), one)
    ps, lossess = train(params, *jax.device_put((X, Y_train), batch), replicated)
    report["train_losses"] = [losses1, lossess]
    report["train_loss"] = rel_diff(lossess, losses1)
    report["train_params"] = rel_diff(ps, p1, per_leaf=False)
    report["params_replicated"] = all(
        p.sharding.is_equivalent_to(replicated, p.ndim) for p in jax.tree.leaves(ps)
    )
    return report


if __name__ == "__main__":
    print(json.dumps(main()))
