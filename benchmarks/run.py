"""The benchmark suite's command line (``make bench``).

    python -m benchmarks.run [--sizes small,main,large] [--quick] [--out artifacts/bench]

Writes ``results.md`` (the tables), ``results.json`` (every number, with the machine) and
``scaling.png`` (log-log time against B and against D) to the output folder, and prints the
markdown. Method (:mod:`benchmarks.harness`): each implementation runs a block of consecutive
calls (its steady state) after a pause that lets the other libraries' threads go idle; blocks
alternate by round and ratios are taken per round. The headline rows (``HEADLINE``) are then
measured again with each implementation in a process of its own (:mod:`benchmarks.solo`). Run
it on a quiet machine: load still adds noise (the load average at the start and the end is
recorded).

OpenBLAS: when ``OPENBLAS_CORETYPE`` or ``OPENBLAS_L2_SIZE`` is set, the suite restarts itself
without them (``--keep-openblas-env`` keeps them), so that NumPy's BLAS, which measures the
hardware bound, runs the kernel it detects for this CPU; the JSON file records which one ran.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

_OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

# Rounds per size, and the time after which an operation stops adding rounds.
_ROUNDS = {"small": 5, "main": 5, "large": 4}
_MAX_SECONDS = 30.0
_SWEEP_ROUNDS = 3
# Rows confirmed with every implementation in its own process, and their rounds.
HEADLINE = (
    ("main", "combined_loss fwd+bwd"),
    ("large", "combined_loss fwd+bwd"),
    ("main", "solve_subspaces"),
    ("large", "solve_subspaces"),
)
_PROCESS_ROUNDS = 5
_SWEEP_B = (512, 2048, 8192, 16384)
_SWEEP_D = (64, 256, 512, 1024)
_QUICK_SWEEP_B = (256, 512)
_QUICK_SWEEP_D = (32, 64)
# Size names of the neighbour benchmarks (shared_space, sweep) that stand for ours.
_SIZE_ALIASES = {"main": ("medium",)}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="space_jax and its torch bridge against spacelearn 0.1.0.",
    )
    p.add_argument("--sizes", default="small,main,large", help="comma-separated: small,main,large")
    p.add_argument("--out", default="artifacts/bench", help="output folder")
    p.add_argument(
        "--ops",
        default=None,
        help="comma-separated operation names to measure (default all), e.g. "
        "'combined_loss fwd+bwd,solve_subspaces'",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 3 rounds, small sweeps (numbers are not meaningful)",
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds per operation (all sizes)")
    p.add_argument(
        "--pause", type=float, default=None, help="seconds of idle before each block (0.05)"
    )
    p.add_argument("--block", type=float, default=None, help="seconds a block aims at (0.2)")
    p.add_argument("--max-seconds", type=float, default=None, help="time cap per operation")
    p.add_argument("--sweep-B", type=_ints, default=None, help="batch sizes of the B sweep")
    p.add_argument("--sweep-D", type=_ints, default=None, help="latent dims of the D sweep")
    p.add_argument("--no-sweeps", action="store_true", help="skip the B and D sweeps")
    p.add_argument("--no-bridge", action="store_true", help="skip space_torch_bridge")
    p.add_argument(
        "--no-processes",
        action="store_true",
        help="skip the separate-process confirmation of the headline rows",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak memory measurements")
    p.add_argument(
        "--no-extras",
        action="store_true",
        help="skip benchmarks.shared_space, .sweep, .breakdown, .torch_step, .spin and "
        "benchmarks.streaming",
    )
    p.add_argument(
        "--xla-flags",
        default=None,
        help="XLA_FLAGS for this run (only effective before JAX is imported in this process)",
    )
    p.add_argument(
        "--single-thread",
        action="store_true",
        help="one thread in every library (XLA, OpenBLAS, torch): steadier on a loaded machine",
    )
    p.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="the statistic of the rounds the report shows (the JSON file keeps both)",
    )
    p.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        default=None,
        help="measure nothing: write the report of an earlier results.json to --out",
    )
    p.add_argument("--keep-openblas-env", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="do not print progress or the report")
    return p


def _import_extra(module: str):
    """``(module, None)``, or ``(None, status)`` if ``benchmarks.<module>`` is absent or broken."""
    name = f"benchmarks.{module}"
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return None, {"status": "not available", "error": f"no module {name}"}
        return None, {"status": "error", "error": f"{type(e).__name__}: {e}"}
    except Exception as e:  # noqa: BLE001 - a broken neighbour must not sink the suite
        return None, {"status": "error", "error": f"{type(e).__name__}: {e}"}
    if not callable(getattr(mod, "run", None)):
        return None, {"status": "not available", "error": f"{name} has no run()"}
    return mod, None


def _their_size(mod, name: str) -> str | None:
    """The size name a neighbour module offers for ours (its ``SIZES``; "main" ~ "medium")."""
    offered = getattr(mod, "SIZES", None)
    if offered is None or name in offered:
        return name
    return next((alias for alias in _SIZE_ALIASES.get(name, ()) if alias in offered), None)


def _call_extra(module: str, calls: dict[str, tuple[tuple, dict]], log) -> dict:
    """Runs ``benchmarks.<module>.run(*args, **kwargs)`` per label."""
    mod, status = _import_extra(module)
    if mod is None:
        return {"all sizes": status}
    out = {}
    for label, (args, kwargs) in calls.items():
        log(f"  {module}: {label}")
        try:
            out[label] = mod.run(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            out[label] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
    return out


def _extras(sizes, quick: bool, log) -> dict:
    """The neighbour benchmarks, at the requested sizes they offer (only "small" when quick)."""
    out = {}
    for module in ("shared_space", "sweep", "breakdown", "torch_step"):
        mod, status = _import_extra(module)
        if mod is None:
            out[module] = {"all sizes": status}
            continue
        calls, skipped = {}, {}
        for s in sizes:
            theirs = _their_size(mod, s.name)
            if theirs is None or (quick and theirs != "small"):
                skipped[s.name] = {"status": "skipped", "error": f"no {s.name!r} size there"}
            else:
                calls[s.name if theirs == s.name else f"{s.name} (their {theirs!r})"] = (
                    (theirs,),
                    {},
                )
        out[module] = {**_call_extra(module, calls, log), **skipped}
    streaming_calls = {}
    for s in sizes:
        kwargs = {
            "n_samples": 4 * s.B if quick else 10**6,
            "D": s.D,
            "m": (s.m,) * s.Q,
            "batch": s.B if quick else 8192,
        }
        streaming_calls[s.name] = ((), kwargs)
    out["streaming"] = _call_extra("streaming", streaming_calls, log)
    # The all-reduce across 2 processes x 2 CPU devices, at the main size (README, "Several hosts").
    if not quick and any(s.name == "main" for s in sizes):
        out["multihost"] = _call_extra("multihost", {"main": ((), {})}, log)
    # CPU time thread pools burn after a call (README: LAPACK's threads, torch's OpenMP workers).
    if not quick:
        out["spin"] = _call_extra("spin", {"after one call": ((), {})}, log)
    return out


def main(argv: list[str] | None = None) -> dict:
    """Runs the suite; returns the results (also written to ``--out``)."""
    args = _parser().parse_args(argv)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    if args.xla_flags is not None:
        if "jax" in sys.modules:
            log("warning: JAX is already imported; --xla-flags has no effect in this process")
        os.environ["XLA_FLAGS"] = args.xla_flags
    limits = _single_thread(log) if args.single_thread else None

    from . import core, harness, problems, report
    from .harness import BLOCK_S, MIN_CALLS, PAUSE_S

    if args.render is not None:
        import json

        results = json.loads(Path(args.render).read_text())
        results["config"] = {**(results.get("config") or {}), "stat": args.stat}
        paths = report.write(results, args.out)
        log(f"wrote {', '.join(str(p) for p in paths.values())}")
        return results

    names = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [n for n in names if n not in problems.SIZES]
    if unknown:
        raise SystemExit(f"--sizes: unknown size(s) {unknown}; choose from {list(problems.SIZES)}")
    sizes = [problems.SIZES[n] for n in names]

    def rounds_for(name: str) -> int:
        if args.rounds is not None:
            return args.rounds
        return 3 if args.quick else _ROUNDS.get(name, 10)

    max_seconds = args.max_seconds or (5.0 if args.quick else _MAX_SECONDS)
    min_rounds = 2 if args.quick else 3
    ops = None if args.ops is None else tuple(o.strip() for o in args.ops.split(",") if o.strip())
    timing = {
        "pause_s": args.pause if args.pause is not None else (0.005 if args.quick else PAUSE_S),
        "block_s": args.block if args.block is not None else (0.005 if args.quick else BLOCK_S),
        "min_calls": 1 if args.quick else MIN_CALLS,
    }
    results_timing = dict(timing)
    bridge = not args.no_bridge
    t_start = time.perf_counter()
    results: dict = {
        "machine": harness.machine(),
        "config": {**vars(args), "timing": results_timing},
        "rows": [],
        "sweeps": {},
        "extras": {},
    }
    if bridge:
        module, reason = core.bridge_status()
        results["bridge"] = {"available": module is not None, "reason": reason}

    log("benchmarks: operations")
    for size in sizes:
        results["rows"] += core.measure(
            size,
            rounds=rounds_for(size.name),
            max_seconds=max_seconds,
            min_rounds=min_rounds,
            bridge=bridge,
            which=ops,
            memory=not args.no_memory,
            timing=timing,
            log=log,
        )

    if not args.no_processes:
        log("benchmarks: headline rows in separate processes")
        results["processes"] = _processes(names, ops, args, bridge, timing, log)

    if bridge:
        log("benchmarks: bridge overhead")
        module, reason = core.bridge_status()
        if module is None:
            results["bridge_overhead"] = {"status": reason}
        else:
            results["bridge_overhead"] = {
                "rows": core.measure(
                    problems.TINY,
                    rounds=max(rounds_for("small"), 10 if not args.quick else 3),
                    max_seconds=max_seconds,
                    min_rounds=min_rounds,
                    which=("combined_loss fwd+bwd",),
                    memory=False,
                    bounds=False,
                    bridge_forward=True,
                    timing=timing,
                    log=log,
                )
            }

    if not args.no_sweeps:
        log("benchmarks: sweeps")
        base = problems.SIZES["small" if args.quick else "main"]
        batches = args.sweep_B or (_QUICK_SWEEP_B if args.quick else _SWEEP_B)
        dims = args.sweep_D or (_QUICK_SWEEP_D if args.quick else _SWEEP_D)
        for axis, sweep in problems.sweep_sizes(base, batches=batches, dims=dims).items():
            results["sweeps"][axis] = [
                row
                for s in sweep
                for row in core.measure(
                    s,
                    rounds=3 if args.quick else (args.rounds or _SWEEP_ROUNDS),
                    max_seconds=max_seconds,
                    min_rounds=min_rounds,
                    bridge=bridge,
                    which=("combined_loss fwd+bwd",),
                    memory=False,
                    timing=timing,
                    log=log,
                )
            ]

    if not args.no_extras:
        log("benchmarks: shared space, sweeps, streaming")
        results["extras"] = _extras(sizes, args.quick, log)

    del limits  # the thread limits hold until here
    results["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    results["elapsed_s"] = time.perf_counter() - t_start
    paths = report.write(results, args.out)
    results["paths"] = {k: str(v) for k, v in paths.items()}
    if not args.quiet:
        print(Path(paths["markdown"]).read_text())
        log(f"wrote {', '.join(str(p) for p in paths.values())} in {results['elapsed_s']:.0f} s")
    return results


def _processes(names, ops, args, bridge: bool, timing: dict, log) -> list[dict]:
    """The headline rows of the requested sizes, each implementation in its own process
    (``--quick``: the first headline operation at the first size, as a smoke test)."""
    from . import core, problems, solo
    from .harness import min_over

    impls = ["spacelearn", "space_jax", *(["bridge"] if bridge else [])]
    rows = []
    headline = ((names[0], HEADLINE[0][1]),) if args.quick else HEADLINE
    for size, op in headline:
        if size not in names or (ops is not None and op not in ops):
            continue
        log(f"  {size}: {op} (separate processes)")
        which = impls + (list(core.BOUNDS) if op.startswith("combined_loss") else [])
        try:
            timings = solo.time_processes(
                size,
                op,
                which,
                rounds=2 if args.quick else (args.rounds or _PROCESS_ROUNDS),
                **timing,
            )
        except Exception as e:  # noqa: BLE001 - the in-process rows stand without it
            rows.append({"size": problems.SIZES[size].as_dict(), "op": op, "error": str(e)})
            continue
        times = {k: t.as_dict() for k, t in timings.items()}
        bound = min_over([times[k] for k in core.BOUNDS if k in times])
        if bound is not None:
            times["bound"] = bound
        rows.append(
            {
                "size": problems.SIZES[size].as_dict(),
                "op": op,
                "method": "separate processes, steady-state blocks",
                "notes": [],
                "times": times,
            }
        )
    return rows


def _single_thread(log):
    """Limits XLA, the BLAS libraries and torch to one thread; returns what keeps the limit."""
    if "jax" in sys.modules or "numpy" in sys.modules:
        log("warning: --single-thread set after NumPy or JAX was imported; limits may not hold")
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (
        flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    ).strip()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import jax.numpy as jnp
    import threadpoolctl
    import torch

    torch.set_num_threads(1)
    jnp.linalg.eigh(jnp.eye(2))  # loads the LAPACK that JAX calls, so that the limit covers it
    return threadpoolctl.threadpool_limits(1)


def _restart_without_openblas_env() -> None:
    """Re-executes this command without the OpenBLAS overrides (before NumPy is imported)."""
    if "--keep-openblas-env" in sys.argv or not any(k in os.environ for k in _OPENBLAS_ENV):
        return
    env = {k: v for k, v in os.environ.items() if k not in _OPENBLAS_ENV}
    removed = {k: os.environ[k] for k in _OPENBLAS_ENV if k in os.environ}
    print(f"benchmarks: restarting without {removed}", file=sys.stderr, flush=True)
    argv = [sys.executable, "-m", "benchmarks.run", *sys.argv[1:], "--keep-openblas-env"]
    os.execve(sys.executable, argv, env)


if __name__ == "__main__":
    _restart_without_openblas_env()
    main()
