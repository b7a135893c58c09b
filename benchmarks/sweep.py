"""Vmapped sweeps against running the configurations one after another.

    python -m benchmarks.sweep [--size small|large] [--json]

Two training functions, each over a 16-configuration grid:

* ``projections``: :func:`space_jax.train_projections` (the shared latent space) over learning
  rates and alignment weights, mini-batch Adam;
* ``space``: a small SPACE training run (an MLP encoder, Adam on :func:`space_jax.combined_loss`,
  the subspaces refreshed on a schedule inside the compiled loop) over learning rates, alignment
  weights, the active subspace size (``active_k``) and seeds.

For each, ``loop_s`` is the time of 16 calls of the jitted single-configuration function, one
after another, and ``vmap_s`` the time of one call of the jitted, vmapped function over the 16
(what :func:`space_jax.sweep` runs); ``speedup = loop_s / vmap_s``. Targets on 2 CPU cores:
``space`` at least 2.5x, ``projections`` at least 5x. Data and parameters are arguments of the
jitted functions, never closed over; compilation is timed apart (first call). Method: the
harness's steady-state blocks (:func:`benchmarks.harness.time_blocks`: each side runs a block of
consecutive calls after a pause, the order alternating by round); the speed-up is the median over
rounds of the per-round ratio. The vmapped results are checked against the loop's
(``max_rel_diff``), and :func:`space_jax.sweep` is checked to return them too.

Every decomposition in these runs goes through :mod:`space_jax.linalg`: on CPU a vmapped
eigensolver or SVD is one LAPACK call per configuration (never jaxlib 0.10's threaded batched
kernels, which can deadlock), so that part of a step does not batch; ``eigvals_only`` measures
it alone.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

import space_jax as sj
from benchmarks.harness import machine, ratio, time_blocks

SIZES = {
    # projections: samples, input sizes, latent size, epochs, batch;
    # space: samples, input size, hidden, latent size, steps, refresh every
    "small": {"projections": (512, (32, 48), 8, 40, 64), "space": (64, 24, 16, 8, 120, 30)},
    "large": {"projections": (2048, (64, 96), 16, 40, 128), "space": (512, 32, 64, 24, 120, 30)},
}
ROUNDS = {"small": 5, "large": 3}


# --- the two training functions ---------------------------------------------------------------


def projections_case(size: str):
    """``train_fn(config, params, data)`` for train_projections, its grid and arguments."""
    samples, dims, latent_dim, epochs, batch = SIZES[size]["projections"]
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(samples, 4))
    data = {
        f"model{i}": jnp.asarray(
            (shared @ rng.normal(size=(4, n)) + 0.5 * rng.normal(size=(samples, n))) / np.sqrt(n),
            jnp.float32,
        )
        for i, n in enumerate(dims)
    }
    params = sj.init_projections(
        jax.random.PRNGKey(0), {m: x.shape[1] for m, x in data.items()}, latent_dim
    )
    base = sj.ProjectionConfig(n_epochs=epochs, batch_size=batch)

    def train_fn(config, params, data):
        cfg = base.replace(
            learning_rate=config["learning_rate"], alignment_weight=config["alignment_weight"]
        )
        trained, history = sj.train_projections(params, data, cfg, key=jax.random.PRNGKey(1))
        return {"final_loss": history[-1], "first_loss": history[0]}

    grid = {"learning_rate": [1e-3, 3e-3, 1e-2, 3e-2], "alignment_weight": [0.1, 0.3, 1.0, 3.0]}
    return train_fn, grid, (params, data)


def _mlp_init(key, n_in, hidden, latent_dim):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (n_in, hidden)) / jnp.sqrt(n_in),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, latent_dim)) / jnp.sqrt(hidden),
    }


def _encode(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


def space_case(size: str):
    """``train_fn(config, x, y)`` for a small SPACE training run, its grid and arguments."""
    samples, n_in, hidden, latent_dim, steps, refresh_every = SIZES[size]["space"]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(samples, n_in))
    y = {
        "signal": x[:, :8] @ rng.normal(size=(8, 6)),
        "energy": np.sum(x[:, 8:16] ** 2, axis=1, keepdims=True) / 8,
        "phase": np.sin(x[:, 16:20] @ rng.normal(size=(4, 4))),
    }
    x = jnp.asarray(x, jnp.float32)
    y = {q: jnp.asarray(v, jnp.float32) for q, v in y.items()}
    k_max = 4

    def train_fn(config, x, y):
        params = _mlp_init(jax.random.PRNGKey(config["seed"]), n_in, hidden, latent_dim)
        tx = optax.adam(config["learning_rate"])
        weights = sj.LossWeights(config["alignment_weight"], 1.0, 1.0, 1.0)

        def refresh(params):
            return sj.solve_subspaces(_encode(params, x), y, k=k_max, active_k=config["k"])

        def step(carry, _):
            params, state, space, w_prev = carry
            loss, grads = jax.value_and_grad(
                lambda p: sj.combined_loss(
                    _encode(p, x), space.W, space.A, y, w_prev, weights=weights
                )
            )(params)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state, space, w_prev), loss

        def period(carry, _):
            params, state, space, _ = carry
            new = refresh(params)
            carry, losses = jax.lax.scan(
                step, (params, state, new, space.W), None, length=refresh_every
            )
            return carry, losses

        space = refresh(params)
        carry = (params, tx.init(params), space, space.W)
        (params, *_), losses = jax.lax.scan(period, carry, None, length=steps // refresh_every)
        return {"final_loss": losses[-1, -1], "first_loss": losses[0, 0]}

    grid = {
        "learning_rate": [3e-3, 1e-2],
        "alignment_weight": [0.5, 2.0],
        "k": [2, 4],
        "seed": [0, 1],
    }
    return train_fn, grid, (x, y)


def eigvals_case(size: str):
    """Diagnostic: only the isotropy term's eigensolver, as often as the SPACE run calls it.

    ``symmetric_eigvals`` is a LAPACK call on CPU, and a batch of them is a loop of LAPACK
    calls (batch-safe, see :mod:`space_jax._lapack`), so this part of a SPACE step gains only
    the per-call overhead from vmap.
    """
    samples, _, _, latent_dim, steps, _ = SIZES[size]["space"]
    z = jnp.asarray(np.random.default_rng(2).normal(size=(samples, latent_dim)), jnp.float32)

    def train_fn(config, z):
        def step(g, _):
            lam = sj.symmetric_eigvals(g)
            return g + config["learning_rate"] * jnp.diag(lam), lam[0]

        _, top = jax.lax.scan(step, z.T @ z, None, length=steps)
        return {"final_loss": top[-1], "first_loss": top[0]}

    grid = {"learning_rate": [float(v) for v in np.linspace(1e-3, 1e-2, 16)]}
    return train_fn, grid, (z,)


# --- measuring -----------------------------------------------------------------------------------


def _stacked(grid: dict) -> tuple[dict, list[dict]]:
    configs = sj.expand_grid(grid)
    batch = {n: jnp.asarray(np.asarray([c[n] for c in configs])) for n in configs[0]}
    singles = [{n: v[i] for n, v in batch.items()} for i in range(len(configs))]
    return batch, singles


def measure(train_fn, grid: dict, args: tuple, rounds: int) -> dict:
    """Loop of 16 jitted calls against one vmapped call; results compared."""
    batch, singles = _stacked(grid)
    single = jax.jit(train_fn)
    batched = jax.jit(jax.vmap(train_fn, in_axes=(0,) + (None,) * len(args)))

    def loop():
        return jax.block_until_ready([single(c, *args) for c in singles])

    def vectorised():
        return jax.block_until_ready(batched(batch, *args))

    timings = time_blocks({"loop": loop, "vmap": vectorised}, rounds=rounds, min_rounds=rounds)
    looped = {m: np.stack([np.asarray(o[m]) for o in loop()]) for m in loop()[0]}
    vmapped = {m: np.asarray(v) for m, v in vectorised().items()}
    rel = max(
        float(np.max(np.abs(vmapped[m] - looped[m]) / (np.abs(looped[m]) + 1e-6))) for m in looped
    )
    swept = sj.sweep(train_fn, grid, *args)  # the public helper, end to end (compiles once)
    sweep_rel = max(
        float(np.max(np.abs(swept[m] - looped[m]) / (np.abs(looped[m]) + 1e-6))) for m in looped
    )
    loop_s, vmap_s = timings["loop"].median_s, timings["vmap"].median_s
    return {
        "n_configs": len(singles),
        "loop_s": loop_s,
        "vmap_s": vmap_s,
        "speedup": ratio(timings["loop"], timings["vmap"]),
        "speedup_samples": [
            a / b for a, b in zip(timings["loop"].samples, timings["vmap"].samples, strict=True)
        ],
        "loop_compile_s": timings["loop"].compile_s,
        "vmap_compile_s": timings["vmap"].compile_s,
        "sweep_helper_s": swept.seconds,
        "max_rel_diff": rel,
        "sweep_helper_max_rel_diff": sweep_rel,
        "same_results": bool(rel < 1e-3 and sweep_rel < 1e-3),
        "rounds": timings["loop"].rounds,
    }


def run(size: str = "small") -> dict:
    """Both sweeps at ``size`` (``"small"`` or ``"large"``).

    Returns:
      ``{"size", "backend", "machine", "projections": {...}, "space": {...}}``, each case with
      ``loop_s``, ``vmap_s``, ``speedup``, compile times, ``max_rel_diff`` and
      ``same_results``.
    """
    if size not in SIZES:
        raise ValueError(f"size: expected one of {list(SIZES)}, got {size!r}")
    out = {
        "size": size,
        "backend": jax.default_backend(),
        # GPUs default to TF32 products for float32, which separates the loop's and the vmapped
        # results of a long SPACE run by ~1e-2; "highest" makes them agree as on CPU.
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "machine": machine(),
    }
    for name, case in (
        ("projections", projections_case),
        ("space", space_case),
        ("eigvals_only", eigvals_case),
    ):
        train_fn, grid, args = case(size)
        out[name] = measure(train_fn, grid, args, ROUNDS[size])
    return out


def _table(result: dict) -> str:
    lines = [
        "| sweep (16 configs) | loop (s) | vmap (s) | speed-up | max rel. diff |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in ("projections", "space", "eigvals_only"):
        r = result[name]
        lines.append(
            f"| {name} | {r['loop_s']:.3f} | {r['vmap_s']:.3f} | {r['speedup']:.1f}x | "
            f"{r['max_rel_diff']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="vmapped sweeps vs a loop of 16 runs")
    parser.add_argument("--size", default="small", choices=list(SIZES))
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = parser.parse_args(argv)
    result = run(args.size)
    print(json.dumps(result, indent=2, default=str) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
