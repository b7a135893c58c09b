"""What glibc's malloc settings cost at the large size: one subprocess per setting.

    python -m benchmarks.malloc [--size large] [--repeats 2] [--rounds 5]

XLA's CPU buffers come from ``malloc``; glibc maps a buffer above its mmap threshold afresh on
every call (README, "Large host buffers"). Each setting runs in a process of its own (glibc
reads its environment variables at start), the processes one after another, the list of
settings ``--repeats`` times over, in reverse order every other time. Each process times the
jitted combined loss fwd+bwd and ``solve_subspaces`` in steady-state blocks
(:func:`benchmarks.harness.time_blocks`) and counts the minor page faults of each of 20 further
calls (their median is reported). The table
gives the median over the repeats, and each time relative to glibc's defaults from the same
repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from .harness import result_in_subprocess

__all__ = ["SETTINGS", "measure", "run"]

SETTINGS = {
    "glibc defaults": {"SPACE_JAX_MMAP_THRESHOLD": "0"},
    "space_jax's default (thresholds raised by mallopt)": {},
    "at launch: one arena, thresholds and top pad": {
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_THRESHOLD_": str(2**30),
        "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1),
        "MALLOC_TOP_PAD_": str(64 * 2**20),
    },
}
_OPS = ("combined_loss fwd+bwd", "solve_subspaces")
# Faults are counted per call and the median reported: each malloc arena (one per XLA thread
# that allocates) grows once, at a call that varies between runs, and one such growth in a
# mean of a few calls looked like a fault per page on every call.
_FAULT_CALLS = 20


def measure(size: str, rounds: int) -> dict:
    """In this process: ``{op: {"ms": median ms, "faults": minor faults per call}}``."""
    import resource

    import jax

    import space_jax as sj

    from .harness import time_blocks
    from .problems import SIZES, make_problem

    s = SIZES[size]
    p = make_problem(s)
    Z, W, A, Y = jax.device_put((p.Z, p.W, p.A, p.Y))
    loss = jax.jit(jax.value_and_grad(sj.combined_loss))
    solve = jax.jit(lambda Z, Y: sj.solve_subspaces(Z, Y, k=s.k))
    fns = {
        _OPS[0]: lambda: jax.block_until_ready(loss(Z, W, A, Y)),
        _OPS[1]: lambda: jax.block_until_ready(solve(Z, Y)),
    }
    timings = time_blocks(fns, rounds=rounds)
    out = {}
    for name, fn in fns.items():
        per_call = []
        for _ in range(_FAULT_CALLS):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            fn()
            per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        out[name] = {"ms": timings[name].median_s * 1e3, "faults": float(np.median(per_call))}
    return out


def _clean_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    env.pop("SPACE_JAX_MMAP_THRESHOLD", None)
    return {**env, **extra}


def run(size: str = "large", repeats: int = 2, rounds: int = 5, log=None) -> dict:
    """``{setting: {op: {"ms", "ratio", "faults"}}}``: medians over ``repeats``; ``ratio`` is the
    setting's time over glibc's defaults in the same repeat (below 1: faster)."""
    samples: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for rep in range(repeats):
        order = list(SETTINGS) if rep % 2 == 0 else list(SETTINGS)[::-1]  # drift cancels
        for name in order:
            extra = SETTINGS[name]
            samples[name].append(
                result_in_subprocess(
                    "malloc", "measure", (size, rounds), env=_clean_env(extra), label=name
                )
            )
            if log:
                log(f"  malloc {rep + 1}/{repeats} {name}: {samples[name][-1]}")
    base = samples["glibc defaults"]
    out = {}
    for name, runs in samples.items():
        out[name] = {
            op: {
                "ms": float(np.median([r[op]["ms"] for r in runs])),
                "ratio": float(
                    np.median([r[op]["ms"] / b[op]["ms"] for r, b in zip(runs, base, strict=True)])
                ),
                "faults": float(np.median([r[op]["faults"] for r in runs])),
            }
            for op in _OPS
        }
    out["size"] = size
    return out


def table(results: dict) -> str:
    """A markdown table of :func:`run`'s results."""
    lines = [
        "| setting | "
        + " | ".join(f"{op} ms (vs defaults) | faults per call" for op in _OPS)
        + " |",
        "|" + " --- |" * (1 + 2 * len(_OPS)),
    ]
    for name in SETTINGS:
        cells = []
        for op in _OPS:
            r = results[name][op]
            cells += [f"{r['ms']:.1f} ({r['ratio']:.2f}x)", f"{r['faults']:.0f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="large")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    results = run(args.size, args.repeats, args.rounds, log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
