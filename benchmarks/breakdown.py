"""Where the combined loss's time goes: its pieces timed in the same rounds as the whole.

    python -m benchmarks.breakdown [--size main|large] [--single-thread]

Each piece is the jitted operation the loss runs (on the same inputs), timed with the protocol
of :func:`benchmarks.harness.time_blocks`: the centering pass, ``G = Zs.T @ Zs`` through XLA
(as one product, and from column halves as the loss forms it: :func:`space_jax._spmd.batch_gram`)
and through NumPy (whose ``a.T @ a`` is a symmetric rank-k update, half the arithmetic), the
coordinates ``Zs @ W.T``, the ``D x D`` eigendecomposition, the backward product
``B x (K + n_dir) x D``, and the loss forward and forward + backward. ``make bench`` calls it
for the main and large sizes.
"""

from __future__ import annotations

import argparse
import json
import os

__all__ = ["SIZES", "run"]

SIZES = ("main", "large")


def run(size: str = "main", rounds: int = 5) -> dict:
    """Median ms per piece at ``size`` (a name of :data:`benchmarks.problems.SIZES`)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import space_jax as sj
    from space_jax import linalg
    from space_jax._spmd import batch_gram
    from space_jax._top_eigh import top_eigh

    from .harness import time_blocks
    from .problems import SIZES as PROBLEMS
    from .problems import make_problem

    if size not in SIZES:
        raise ValueError(f"size: expected one of {SIZES}, got {size!r}")
    p = make_problem(PROBLEMS[size])
    Z, W, A, Y = jax.device_put((p.Z, p.W, p.A, p.Y))
    zs_np = np.ascontiguousarray((p.Z - p.Z.mean(0)) / np.float32(2 * np.abs(p.Z).max()))
    zs = jnp.asarray(zs_np)
    w_all = jnp.asarray(np.concatenate(list(p.W.values())))
    g = zs.T @ zs
    n_dir = 32
    left = jnp.asarray(np.random.default_rng(0).normal(size=(p.Z.shape[0], w_all.shape[0] + n_dir)))
    right = jnp.asarray(
        np.random.default_rng(1).normal(size=(w_all.shape[0] + n_dir, p.Z.shape[1]))
    )
    left, right = left.astype(jnp.float32), right.astype(jnp.float32)

    def center(z):
        scale = 2.0 * jnp.max(jnp.abs(z))
        return (z - z.mean(0)) / scale

    jits = {
        "center_and_scale": (jax.jit(center), (Z,)),
        "gram_xla": (jax.jit(lambda z: z.T @ z), (zs,)),
        "gram_blocked_xla": (jax.jit(batch_gram), (zs,)),
        "coords_xla": (jax.jit(lambda z, w: z @ w.T), (zs, w_all)),
        "eigh_DxD": (jax.jit(linalg.eigh), (g,)),
        # What the loss runs: the n_dir leading pairs only (space_jax._top_eigh).
        "top_eigh_DxD": (jax.jit(lambda g: top_eigh(g, n_dir)), (g,)),
        "backward_product_xla": (jax.jit(lambda a, b: a @ b), (left, right)),
        "loss_fwd": (jax.jit(sj.combined_loss), (Z, W, A, Y)),
        "loss_fwd_bwd": (jax.jit(jax.value_and_grad(sj.combined_loss)), (Z, W, A, Y)),
    }
    fns = {name: (lambda f=f, a=a: jax.block_until_ready(f(*a))) for name, (f, a) in jits.items()}
    fns["gram_numpy_syrk"] = lambda: zs_np.T @ zs_np
    timings = time_blocks(fns, rounds=rounds)
    out = {f"{name}_ms": t.median_s * 1e3 for name, t in timings.items()}
    out["size"] = PROBLEMS[size].as_dict()
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="main", choices=SIZES)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--single-thread", action="store_true", help="one thread in XLA and OpenBLAS (set first)"
    )
    args = parser.parse_args(argv)
    if args.single_thread:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
    print(json.dumps(run(args.size, args.rounds), indent=1))


if __name__ == "__main__":
    main()
