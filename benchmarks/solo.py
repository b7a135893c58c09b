"""Separate processes: each implementation times its blocks in a process of its own.

In one process, the libraries share the cores' thread pools with each other; here each
implementation (spacelearn, space_jax, the bridge) runs in its own worker process, and the three
BLAS bounds share a fourth. The driver (:func:`time_processes`) alternates the workers round by
round exactly as :func:`benchmarks.harness.time_blocks` alternates functions: a pause, then one
block of consecutive calls in one worker while the others wait idle on their pipes. The workers
build the same inputs from the same seed (:func:`benchmarks.problems.make_problem`).

The protocol is one JSON object per line on the worker's stdin and stdout:
``{"setup": {"size": ..., "op": ..., "impls": [...]}}`` answers ``{"first_s": {...},
"calls": {...}}`` (first calls, warm-up, calls per block), ``{"block": impl}`` answers
``{"t": seconds}`` (the block's median call) and end of input ends the worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

from .harness import BLOCK_S, MIN_CALLS, PAUSE_S, Timing, calls_for, quiet, run_block

__all__ = ["time_processes"]

# Worker groups: each inner tuple shares one process (the bounds are measured together).
GROUPS = (("spacelearn",), ("space_jax",), ("bridge",), ("bound_numpy", "bound_xla", "bound_torch"))
_TIMEOUT_S = 900.0


def _worker() -> None:  # pragma: no cover - runs in the child process
    from space_jax._host_malloc import ensure_host_malloc

    from . import core

    ensure_host_malloc()  # spacelearn's worker gets space_jax's malloc settings too
    from .problems import SIZES, TINY, make_problem

    fns, calls = {}, {}
    for line in sys.stdin:
        msg = json.loads(line)
        if "setup" in msg:
            s = msg["setup"]
            size = TINY if s["size"] == TINY.name else SIZES[s["size"]]
            with quiet():
                ops = core.ops_for(
                    make_problem(size), bridge="bridge" in s["impls"], which=(s["op"],)
                )
            op = ops[0]
            fns = {impl: op.fns[impl] for impl in s["impls"] if impl in op.fns}
            first = {}
            for impl, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                first[impl] = time.perf_counter() - t0
                t0 = time.perf_counter()
                fn()
                calls[impl] = calls_for(time.perf_counter() - t0, s["block_s"], s["min_calls"])
            reply = {"first_s": first, "calls": calls}
        else:
            impl = msg["block"]
            reply = {"t": run_block(fns[impl], calls[impl])}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class _Worker:
    def __init__(self, impls: Sequence[str]):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.impls = tuple(impls)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.solo"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )

    def ask(self, msg: dict) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.impls} exited (code {self.proc.poll()})")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 - a stuck worker is killed
            self.proc.kill()
            self.proc.wait()


def time_processes(
    size: str,
    op: str,
    impls: Sequence[str],
    *,
    rounds: int,
    pause_s: float = PAUSE_S,
    block_s: float = BLOCK_S,
    min_calls: int = MIN_CALLS,
) -> dict[str, Timing]:
    """Times ``op`` at ``size`` with each implementation group in its own process.

    Args:
      size: a name of :data:`benchmarks.problems.SIZES`, or ``"tiny"``.
      op: an operation name of :func:`benchmarks.core.ops_for`.
      impls: the implementations and bounds to time (absent ones are left out).
      rounds, pause_s, block_s, min_calls: as :func:`benchmarks.harness.time_blocks`.

    Returns:
      impl -> :class:`~benchmarks.harness.Timing`.
    """
    groups = [tuple(i for i in g if i in impls) for g in GROUPS]
    workers = [_Worker(g) for g in groups if g]
    try:
        first, calls = {}, {}
        for w in workers:  # set up one at a time: compilation must not overlap a neighbour
            setup = {"size": size, "op": op, "impls": list(w.impls), "block_s": block_s,
                     "min_calls": min_calls}  # fmt: skip
            reply = w.ask({"setup": setup})
            first.update(reply["first_s"])
            calls.update(reply["calls"])
        order = [(w, impl) for w in workers for impl in w.impls if impl in first]
        samples = {impl: [] for _, impl in order}
        for r in range(max(rounds, 1)):
            for w, impl in order if r % 2 == 0 else order[::-1]:
                time.sleep(pause_s)
                samples[impl].append(w.ask({"block": impl})["t"])
    finally:
        for w in workers:
            w.close()
    return {impl: Timing.from_samples(s, first[impl], calls[impl]) for impl, s in samples.items()}


if __name__ == "__main__":
    _worker()
