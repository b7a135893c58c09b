"""SPACE on a batch sharded over a 4-device mesh (Auto and Explicit axes) versus one device.

Run by ``tests/test_multidevice.py`` in a subprocess, because the device count is fixed when
JAX starts (``XLA_FLAGS=--xla_force_host_platform_device_count=4``, which this script also sets
when run by hand). Prints one JSON object: per mesh kind (``auto``, ``explicit``) and check, the
largest relative difference from the single-device result, and the shardings and collectives
seen. No check wraps the library in ``auto_axes`` or ``set_mesh``: the arrays' own shardings
are all it gets (except the eager gradient on an Explicit mesh, which JAX itself only allows
inside ``jax.set_mesh``).

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
from space_jax import _spmd  # noqa: E402
from space_jax.nnx import SpaceRegularizer  # noqa: E402

K = {"energy": 2, "field": 3}
B, D = 64, 16


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


def is_batch_sharded(x, mesh) -> bool:
    return x.sharding.is_equivalent_to(NamedSharding(mesh, P("batch")), x.ndim) and (
        len({s.device for s in x.addressable_shards}) == mesh.size
    )


def collectives(fn, *args) -> dict:
    hlo = fn.lower(*args).compile().as_text()
    return {"all_reduce": "all-reduce" in hlo, "all_gather": "all-gather" in hlo}


class Encoder(nnx.Module):
    def __init__(self, d_in: int, d_latent: int, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(d_in, 32, rngs=rngs)
        self.out = nnx.Linear(32, d_latent, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


class Regularized(nnx.Module):
    def __init__(self, shapes: dict, rngs: nnx.Rngs):
        self.encoder = Encoder(8, D, rngs)
        self.space = SpaceRegularizer(D, shapes, k=K, n_dir=8)


def flax_training(X, Y_train, placements: dict) -> dict:
    """A data-parallel Flax training step (parameters replicated, the batch sharded) with the
    subspaces refreshed inside the step from the (detached) latents; 3 steps per placement."""
    graphdef, params = nnx.split(Encoder(8, D, nnx.Rngs(0)))
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

    out = {}
    for name, (data, state) in placements.items():
        p = jax.device_put(params, state)
        opt_state = jax.device_put(tx.init(p), state)
        x, y = jax.device_put((X, Y_train), data)
        losses = []
        for _ in range(3):
            p, opt_state, loss = train_step(p, opt_state, x, y)
            losses.append(float(loss))
        out[name] = (p, losses)
    return out


def nnx_regularizer(X, Y_train, placements: dict) -> dict:
    """The NNX helper inside ``nnx.jit``: refresh and loss gradient, per placement."""

    @nnx.jit
    def step(model, x, y):
        model.space.refresh(model.encoder(x), y)
        return nnx.value_and_grad(lambda m: m.space.loss(m.encoder(x), y))(model)

    out = {}
    for name, (data, state) in placements.items():
        model = Regularized({q: v.shape[1:] for q, v in Y_train.items()}, nnx.Rngs(0))
        nnx.update(model, jax.device_put(nnx.state(model), state))
        loss, grads = step(model, *jax.device_put((X, Y_train), data))
        out[name] = (loss, nnx.state(grads, nnx.Param), model.space.current())
    return out


def shared_space(placements: dict) -> dict:
    """``SharedSpace.train`` (host level) on aligned samples, per placement."""
    rng = np.random.default_rng(3)
    lat = rng.normal(size=(B, 3))
    data = {
        "a": lat @ rng.normal(size=(3, 8)) + 0.1 * rng.normal(size=(B, 8)),
        "b": lat @ rng.normal(size=(3, 6)) + 0.1 * rng.normal(size=(B, 6)),
    }
    data = {m: x.astype(np.float32) for m, x in data.items()}
    space = sj.SharedSpace(3).register("a", 8).register("b", 6)
    configs = {
        "default": sj.ProjectionConfig(n_epochs=5),  # full batch, GCCA start
        "minibatch": sj.ProjectionConfig(n_epochs=3, init="xavier", batch_size=16),
    }
    out = {}
    for name, (placement, _) in placements.items():
        x = jax.device_put(data, placement)
        out[name] = {c: space.train(x, cfg, return_history=True) for c, cfg in configs.items()}
    return out


def compare_training(r: dict, flax: dict, nnx_out: dict, shared: dict, kind: str) -> dict:
    if kind not in flax:
        return r
    (p1, losses1), (ps, lossess) = flax["one"], flax[kind]
    r["train_losses"] = [losses1, lossess]
    r["train_loss"] = rel_diff(lossess, losses1)
    r["train_params"] = rel_diff(ps, p1, per_leaf=False)
    r["params_replicated"] = all(p.sharding.is_fully_replicated for p in jax.tree.leaves(ps))
    (loss1, g1, space1), (losss, gs, spaces) = nnx_out["one"], nnx_out[kind]
    r["nnx_loss"] = rel_diff(losss, loss1)
    r["nnx_grads"] = rel_diff(gs, g1, per_leaf=False)
    r["nnx_refresh"] = rel_diff(
        [w.T @ w for w in spaces.W.values()], [w.T @ w for w in space1.W.values()]
    )
    (t1, h1), (ts, hs) = shared["one"]["minibatch"], shared[kind]["minibatch"]
    r["shared_minibatch"] = rel_diff((ts.params, hs), (t1.params, h1))
    # The GCCA start is defined up to rotations within (near-)equal canonical correlations, so
    # rounding moves the parameters (as reordering the rows does on one device); the losses
    # reached are what must agree.
    r["shared_default_history"] = rel_diff(shared[kind]["default"][1], shared["one"]["default"][1])
    return r


def check(kind: AxisType, Z, Y, one, ref: dict) -> dict:
    devices = jax.devices()
    mesh = jax.make_mesh((len(devices),), ("batch",), (kind,))
    batch = NamedSharding(mesh, P("batch"))
    replicated = NamedSharding(mesh, P())
    explicit = kind == AxisType.Explicit

    Zs, Ys = jax.device_put((Z, Y), batch)
    r = {
        "input_sharded": is_batch_sharded(Zs, mesh)
        and all(is_batch_sharded(y, mesh) for y in Ys.values()),
    }
    space1 = ref["space"]

    # solve_subspaces, jitted (the same function as the reference) and eager.
    r["solve_subspaces"] = rel_diff(basis_free(SOLVE(Zs, Ys), Z), basis_free(space1, Z))
    r["solve_subspaces_collectives"] = collectives(SOLVE, Zs, Ys)
    if explicit:  # the same batch contractions as solve_subspaces (Auto meshes: above)
        r["fit_decoders"] = rel_diff(FIT(space1.W, Zs, Ys), ref["fit_decoders"])
        subspaces = [w.T @ w for w in SUBSPACES(Zs, Ys).values()]
        r["subspaces"] = rel_diff(subspaces, ref["subspaces"])

    # moments: local products, then one cross-device reduction; then the solve from them.
    m1, ms = ref["moments"], MOMENTS(Zs, Ys)
    r["moments"] = rel_diff(ms, m1)
    r["moments_eager"] = rel_diff(sj.moments(Zs, Ys), m1)
    r["moments_collectives"] = collectives(MOMENTS, Zs, Ys)
    from_m = FROM_MOMENTS(ms)
    r["solve_from_moments"] = rel_diff(basis_free(from_m, Z), basis_free(space1, Z))

    # stream_moments: of global batches, and of host batches laid out by `sharding=`.
    halves = [(Z[i::2], {q: y[i::2] for q, y in Y.items()}) for i in (0, 1)]
    if explicit:
        r["stream_moments"] = rel_diff(sj.stream_moments(jax.device_put(halves, batch)), m1)
    r["stream_moments_sharding"] = rel_diff(sj.stream_moments(halves, sharding=batch), m1)
    try:
        sj.stream_moments([(Z[:62], {q: y[:62] for q, y in Y.items()})], sharding=batch)
        r["stream_moments_indivisible_error"] = ""
    except ValueError as e:
        r["stream_moments_indivisible_error"] = str(e)

    # A Gram matrix wide enough to be formed from column halves (_spmd.batch_gram).
    wide = np.random.default_rng(5).normal(size=(B, _spmd.BLOCKED_GRAM_MIN)).astype(np.float32)
    wide_s = jax.device_put(wide, batch)
    r["batch_gram"] = rel_diff(GRAM(wide_s), wide.T @ wide)
    r["batch_gram_collectives"] = collectives(GRAM, wide_s)
    if explicit:
        r["batch_gram_eager"] = rel_diff(_spmd.batch_gram(wide_s), wide.T @ wide)

    # The combined loss and its gradient with respect to the sharded latents.
    space_r = jax.device_put(space1, replicated)
    losss, gs = GRAD(Zs, Ys, space_r)
    r["loss"] = rel_diff(losss, ref["loss"])
    r["grad"] = rel_diff(gs, ref["grad"])
    r["grad_type"] = str(jax.typeof(gs))
    r["grad_batch_sharded"] = is_batch_sharded(gs, mesh)
    r["grad_collectives"] = collectives(GRAD, Zs, Ys, space_r)
    if explicit:
        eager_loss = sj.combined_loss(Zs, space1.W, space1.A, Ys, W_PREV(space1))
        r["loss_eager"] = rel_diff(eager_loss, ref["loss"])
        with jax.set_mesh(mesh):  # eager jax.grad of Explicit arrays needs it (JAX's rule)
            ge = jax.grad(sj.combined_loss)(Zs, space1.W, space1.A, Ys, W_PREV(space1))
        r["grad_eager"] = rel_diff(ge, ref["grad"])
        r["grad_eager_batch_sharded"] = is_batch_sharded(ge, mesh)
        for name, fn in SINGLES.items():
            r[f"{name}_loss_and_grad"] = rel_diff(fn(Zs, Ys, space_r), ref[name])

    # Pooling and the host-level sizing functions (on Auto meshes: the multi-process test).
    if not explicit:
        return r
    r["pool"] = rel_diff([sj.pool(Ys["field"], 2), sj.pool(Ys["field"], 3, "max")], ref["pool"])
    r["pool_batch_sharded"] = is_batch_sharded(sj.pool(Ys["field"], 2), mesh)
    r["k_per_q"] = sj.k_per_q(Ys, 0.9) == ref["k_per_q"]
    r["optimal_bins"] = sj.optimal_bins(Ys, 4, 0.9, per_quantity=True) == ref["optimal_bins"]
    r["solve_dims"] = sj.solve_dims(Ys, 4, 0.9, 0.9) == ref["solve_dims"]
    return r


SOLVE = jax.jit(lambda Z, Y: sj.solve_subspaces(Z, Y, k=K))
GRAM = jax.jit(_spmd.batch_gram)
FIT = jax.jit(sj.fit_decoders)
SUBSPACES = jax.jit(lambda Z, Y: sj.subspaces(Z, Y, K))
MOMENTS = jax.jit(sj.moments)
FROM_MOMENTS = jax.jit(lambda m: sj.solve_subspaces_from_moments(m, K))


def W_PREV(space) -> dict:
    return {q: w + 0.01 for q, w in space.W.items()}


@jax.jit
def GRAD(Z, Y, space):
    return jax.value_and_grad(sj.combined_loss)(Z, space.W, space.A, Y, W_PREV(space))


SINGLES = {
    "alignment": jax.jit(jax.value_and_grad(lambda Z, Y, s: sj.alignment_loss(Z, s.W, s.A, Y))),
    "disentanglement": jax.jit(jax.value_and_grad(lambda Z, Y, s: sj.disentanglement_loss(Z, s.W))),
    "isotropy": jax.jit(jax.value_and_grad(lambda Z, Y, s: sj.isotropy_loss(Z, s.W, n_dir=8))),
}


def reference(Z, Y, one) -> dict:
    """Everything on one device and the whole batch."""
    Z1, Y1 = jax.device_put((Z, Y), one)
    space = jax.tree.map(np.asarray, SOLVE(Z1, Y1))  # host constants: usable on any placement
    space1 = jax.device_put(space, one)
    loss, grad = GRAD(Z1, Y1, space1)
    field = Y["field"]
    return {
        "space": space,
        "fit_decoders": FIT(space.W, Z1, Y1),
        "subspaces": [w.T @ w for w in SUBSPACES(Z1, Y1).values()],
        "moments": MOMENTS(Z1, Y1),
        "loss": loss,
        "grad": grad,
        **{name: fn(Z1, Y1, space1) for name, fn in SINGLES.items()},
        "pool": [sj.pool(field, 2), sj.pool(field, 3, "max")],
        "k_per_q": sj.k_per_q(Y, 0.9),
        "optimal_bins": sj.optimal_bins(Y, 4, 0.9, per_quantity=True),
        "solve_dims": sj.solve_dims(Y, 4, 0.9, 0.9),
    }


def main() -> dict:
    Z, Y = problem(0, B=B, D=D, dtype=np.float32)
    Y = {q: Y[q] for q in sorted(Y)}
    one = jax.devices()[0]
    ref = reference(Z, Y, one)
    meshes = {
        name: jax.make_mesh((jax.device_count(),), ("batch",), (kind,))
        for name, kind in (("auto", AxisType.Auto), ("explicit", AxisType.Explicit))
    }
    placements = {"one": (one, one)} | {
        name: (NamedSharding(mesh, P("batch")), NamedSharding(mesh, P()))
        for name, mesh in meshes.items()
    }
    rng = np.random.default_rng(1)
    X = rng.normal(size=(B, 8)).astype(np.float32)
    Y_train = {q: y + X[:, :1].reshape((B,) + (1,) * (y.ndim - 1)) for q, y in Y.items()}
    flax = flax_training(X, Y_train, {k: placements[k] for k in ("one", "explicit")})
    # Auto meshes ran these before Explicit ones existed; the multi-process test runs an NNX
    # training step on both.
    nnx_out = nnx_regularizer(X, Y_train, {k: placements[k] for k in ("one", "explicit")})
    shared = shared_space({k: placements[k] for k in ("one", "explicit")})
    report = {"devices": jax.device_count()}
    for name, mesh in meshes.items():
        r = check(mesh.axis_types[0], Z, Y, one, ref)
        report[name] = compare_training(r, flax, nnx_out, shared, name)
    return report


if __name__ == "__main__":
    print(json.dumps(main()))
