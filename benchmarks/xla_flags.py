"""Does an XLA CPU option make space_jax faster here? One subprocess per set of XLA_FLAGS.

    python -m benchmarks.xla_flags [--sizes main,large] [--rounds 10] [--single-thread]

XLA reads ``XLA_FLAGS`` once, when JAX starts, so each candidate runs in its own process; each
process times the jitted combined loss fwd+bwd and the hardware bound (NumPy's BLAS) in
interleaved rounds and reports their ratio, which is what to compare across processes. The
candidates are XLA's library back ends for CPU matrix products (oneDNN, XNNPACK, YNNPACK) and
its runtime choices. Flags are set for the subprocesses only, never in the library.
"""

from __future__ import annotations

import argparse
import os
import sys

from .harness import result_in_subprocess

CANDIDATES = {
    "default": "",
    "oneDNN": "--xla_cpu_use_onednn=true",
    "oneDNN dot fusion": "--xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
    "XNNPACK": "--xla_cpu_use_xnnpack=true",
    "XNNPACK dot fusion": "--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
    "YNNPACK individual dots": (
        "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
    ),
    "no thunk runtime": "--xla_cpu_use_thunk_runtime=false",
}

_SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def measure(sizes: list[str], rounds: int) -> dict:
    """In this process: combined loss fwd+bwd and the bound, per size (medians, seconds)."""
    from .core import measure as measure_size
    from .problems import SIZES

    out = {}
    for name in sizes:
        (row,) = measure_size(
            SIZES[name],
            rounds=rounds,
            bridge=False,
            which=("combined_loss fwd+bwd",),
            memory=False,
            bounds=True,
        )
        t = row["times"]
        out[name] = {
            k: t[k]["median_s"] for k in ("bound", "bound_numpy", "bound_xla", "space_jax")
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="main,large")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--single-thread", action="store_true", help="one thread everywhere")
    args = p.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    results = {}
    for label, flags in CANDIDATES.items():
        env = dict(os.environ)
        env["XLA_FLAGS"] = " ".join(f for f in (flags, _SINGLE_THREAD * args.single_thread) if f)
        if args.single_thread:
            env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        try:
            results[label] = result_in_subprocess(
                "xla_flags", "measure", (sizes, args.rounds), env=env, label=label, timeout=None
            )
        except RuntimeError as e:
            results[label] = {"error": str(e)}
        print(f"{label}: {results[label]}", file=sys.stderr, flush=True)

    header = "| XLA_FLAGS | " + " | ".join(
        f"{s}: space_jax / bound | {s}: XLA products / bound" for s in sizes
    )
    print(header + " |")
    print("|" + " --- |" * (1 + 2 * len(sizes)))
    for label, r in results.items():
        cells = []
        for s in sizes:
            if "error" in r:
                cells += [r["error"][:60], ""]
            else:
                m = r[s]
                cells += [
                    f"{m['space_jax'] / m['bound']:.2f}x",
                    f"{m['bound_xla'] / m['bound']:.2f}x",
                ]
        print(f"| {label} (`{CANDIDATES[label] or 'none'}`) | " + " | ".join(cells) + " |")
    return results


if __name__ == "__main__":
    main()
