"""One process of a multi-process SPACE run (2 CPU devices each, loopback, gloo collectives).

Started by ``tests/test_multiprocess.py``, once per process. Each process holds only its part
of the batch (``jax.make_array_from_process_local_data``). On a mesh with Auto axes and on one
with Explicit axes it runs ``solve_subspaces``, the combined-loss gradient, ``moments`` ->
``solve_subspaces_from_moments``, ``stream_moments`` (each process streaming its own shard), the
host-level sizing functions and one data-parallel NNX training step. Process 0 writes the
results to ``OUT/results.npz`` and every process writes what it saw of the shardings to
``OUT/process-I.json``; the test compares them with one process's run on the whole batch
(:func:`reference`, which it runs itself).

    python tests/multiprocess_check.py --process-id 0 --port 12345 --out /tmp/r &
    python tests/multiprocess_check.py --process-id 1 --port 12345 --out /tmp/r
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(Path(__file__).parent))
from conftest import problem  # noqa: E402

import space_jax as sj  # noqa: E402
from space_jax.nnx import SpaceRegularizer  # noqa: E402

K = {"energy": 2, "field": 3}
B, D, N_IN, N_DIR = 64, 16, 12, 8
KINDS = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}
_START = time.perf_counter()


def stamp(what: str) -> None:
    """Progress on stderr (shown by the test when a process fails or hangs)."""
    print(f"[{time.perf_counter() - _START:6.1f} s] {what}", file=sys.stderr, flush=True)


def data() -> tuple:
    """The whole batch: latents, targets, encoder inputs and training targets."""
    Z, Y = problem(0, B=B, D=D, dtype=np.float32)
    Y = {q: Y[q] for q in sorted(Y)}
    X = np.random.default_rng(1).normal(size=(B, N_IN)).astype(np.float32)
    Y_train = {q: y + np.tanh(X[:, :1]).reshape((B,) + (1,) * (y.ndim - 1)) for q, y in Y.items()}
    return Z, Y, X, Y_train


class Encoder(nnx.Module):
    def __init__(self, shapes: dict, rngs: nnx.Rngs):
        self.linear = nnx.Linear(N_IN, D, rngs=rngs)
        self.space = SpaceRegularizer(D, shapes, k=K, n_dir=N_DIR)

    def __call__(self, x):
        return jnp.tanh(self.linear(x))


@nnx.jit
def nnx_step(model, optimizer, x, y):
    """One data-parallel step: refresh the subspaces on the batch, then a gradient step."""
    model.space.refresh(model(x), y)
    loss, grads = nnx.value_and_grad(lambda m: m.space.loss(m(x), y))(model)
    optimizer.update(model, grads)
    return loss


def nnx_train(x, y, placement) -> tuple:
    """One step from the same initial model, its state placed by ``placement``."""
    model = Encoder({q: v.shape[1:] for q, v in y.items()}, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    state = nnx.state((model, optimizer))
    nnx.update((model, optimizer), jax.tree.map(lambda a: jax.device_put(a, placement), state))
    loss = nnx_step(model, optimizer, x, y)
    return loss, nnx.state(model, nnx.Param)


solve = jax.jit(lambda Z, Y: sj.solve_subspaces(Z, Y, k=K))
solve_from_moments = jax.jit(lambda m: sj.solve_subspaces_from_moments(m, K))


@jax.jit
def loss_and_grad(Z, Y, W, A, W_prev):
    return jax.value_and_grad(sj.combined_loss)(Z, W, A, Y, W_prev, n_dir=N_DIR)


def w_prev(space) -> dict:
    return {q: np.asarray(w) + 0.01 for q, w in space.W.items()}


def stream(Z, Y) -> list:
    """A process's rows as 4 batches (batch i of the global stream: every process's batch i)."""
    return [(Z[i::4], {q: y[i::4] for q, y in Y.items()}) for i in range(4)]


def reference() -> dict:
    """One process, one device, the whole batch: what every distributed result must equal."""
    Z, Y, X, Y_train = data()
    space = solve(Z, Y)
    W, A = jax.tree.map(np.asarray, (space.W, space.A))
    loss, grad = loss_and_grad(Z, Y, W, A, w_prev(space))
    m = sj.moments(Z, Y)
    nnx_loss, nnx_params = nnx_train(X, Y_train, jax.devices()[0])
    return {
        "space": space,
        "loss": loss,
        "grad": grad,
        "moments": m,
        "from_moments": solve_from_moments(m),
        "k_per_q": sj.k_per_q(Y, 0.9),
        "nnx_loss": nnx_loss,
        "nnx_params": nnx_params,
    }


def flat(tree, prefix: str) -> dict:
    """``{prefix/path: numpy array}`` of a pytree of (fully replicated or local) arrays."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def run(kind: str) -> tuple[dict, dict]:
    """The distributed results (arrays) and what this process saw (flags) on one mesh kind."""
    pid, n_proc = jax.process_index(), jax.process_count()
    Z, Y, X, Y_train = data()
    rows = slice(pid * B // n_proc, (pid + 1) * B // n_proc)  # this process's part
    mesh = jax.make_mesh((jax.device_count(),), ("batch",), axis_types=(KINDS[kind],))
    batch, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())

    def shard(x):
        return jax.make_array_from_process_local_data(batch, x[rows])

    Zs, Ys = shard(Z), {q: shard(y) for q, y in Y.items()}
    seen = {"fully_addressable": Zs.is_fully_addressable, "local_rows": int(Z[rows].shape[0])}
    out = {}

    stamp(f"{kind}: solve_subspaces")
    space = solve(Zs, Ys)
    out |= flat((space.W, space.A), "space")

    stamp(f"{kind}: gradient")
    W, A, W_prev = jax.device_put(
        jax.tree.map(np.asarray, (space.W, space.A, w_prev(space))), replicated
    )
    loss, grad = loss_and_grad(Zs, Ys, W, A, W_prev)
    out["loss"] = np.asarray(loss)
    # The test harness gathers the gradient to compare it; the library never does.
    out["grad"] = np.asarray(jax.experimental.multihost_utils.process_allgather(grad, tiled=True))
    seen["grad_sharded_like_Z"] = grad.sharding.is_equivalent_to(Zs.sharding, 2)
    hlo = loss_and_grad.lower(Zs, Ys, W, A, W_prev).compile().as_text()
    seen["grad_all_gather"] = "all-gather" in hlo
    seen["grad_all_reduce"] = "all-reduce" in hlo

    stamp(f"{kind}: moments")
    m = sj.moments(Zs, Ys)  # eager: the NaN check runs where the data lives
    out |= flat(m, "moments")
    from_moments = solve_from_moments(m)
    out |= flat((from_moments.W, from_moments.A), "from_moments")
    stamp(f"{kind}: stream_moments")
    local = stream(Z[rows], {q: y[rows] for q, y in Y.items()})
    out |= flat(sj.stream_moments(local, sharding=batch), "stream")
    stamp(f"{kind}: sizing")
    seen["k_per_q"] = sj.k_per_q(Ys, 0.9)

    stamp(f"{kind}: nnx step")
    nnx_loss, nnx_params = nnx_train(
        shard(X), {q: shard(y) for q, y in Y_train.items()}, replicated
    )
    out["nnx_loss"] = np.asarray(nnx_loss)
    out |= flat(nnx_params, "nnx_params")
    seen["nnx_params_replicated"] = all(
        p.sharding.is_fully_replicated for p in jax.tree.leaves(nnx_params)
    )
    stamp(f"{kind}: done")
    return out, seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", 2)
    jax.distributed.initialize(
        f"127.0.0.1:{args.port}",
        num_processes=args.num_processes,
        process_id=args.process_id,
        initialization_timeout=60,
    )
    arrays, seen = {}, {"processes": jax.process_count(), "devices": jax.device_count()}
    for kind in KINDS:
        out, seen[kind] = run(kind)
        arrays |= {f"{kind}/{k}": v for k, v in out.items()}
    if args.process_id == 0:
        np.savez(args.out / "results.npz", **arrays)
    (args.out / f"process-{args.process_id}.json").write_text(json.dumps(seen))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
