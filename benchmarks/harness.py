"""Timing, peak memory and the machine description.

Timing protocol (steady-state blocks): each function is called once on its own (the first
call: for a jitted JAX function that is trace + compile + run, reported apart) and once more
to warm caches and to estimate its cost. Then, in every round, each function in turn sleeps
for a pause (so that the thread pools of whatever ran before, XLA's, OpenBLAS's or torch's
OpenMP workers, stop spinning and give the cores back) and runs a block of consecutive calls,
as a training loop would. The functions take turns in an order that alternates from round to
round (forward, then backward), so that drifting machine load hits every function alike.

A round's figure for a function is the median call of its block; the reported ``median_s`` is
the median over rounds, and ratios between two functions are taken per round, then the median
over rounds (:func:`ratio`), so that both sides of a ratio always come from the same round.
Functions must return only when their work is done (``jax.block_until_ready``; torch on CPU is
synchronous).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

__all__ = [
    "Timing",
    "machine",
    "min_over",
    "peak_rss_increase",
    "quiet",
    "ratio",
    "result_in_subprocess",
    "time_blocks",
]

# Defaults of the protocol: pause before each block, the time a block aims at, its call counts.
PAUSE_S = 0.05
BLOCK_S = 0.2
MIN_CALLS = 2
MAX_CALLS = 100


@dataclass(frozen=True)
class Timing:
    """Timing of one function: per-round figures (seconds per call) and its first call."""

    median_s: float
    min_s: float
    first_s: float
    rounds: int
    calls: int = 1
    samples: tuple[float, ...] = field(default=())

    @property
    def compile_s(self) -> float:
        """First call minus a steady call: tracing and compilation for a jitted function."""
        return max(self.first_s - self.median_s, 0.0)

    def as_dict(self) -> dict:
        return {**asdict(self), "samples": list(self.samples), "compile_s": self.compile_s}

    @classmethod
    def from_samples(cls, samples: Sequence[float], first_s: float, calls: int) -> Timing:
        return cls(
            median_s=statistics.median(samples),
            min_s=min(samples),
            first_s=first_s,
            rounds=len(samples),
            calls=calls,
            samples=tuple(samples),
        )


def ratio(a: Mapping | Timing | None, b: Mapping | Timing | None, stat: str = "median"):
    """``a / b`` as the median over rounds of the per-round ratios (``stat="min"``: the ratio
    of the minima). Falls back to the ratio of the medians when the rounds do not pair up.
    None when either side is missing."""
    if a is None or b is None:
        return None
    a = a.as_dict() if isinstance(a, Timing) else a
    b = b.as_dict() if isinstance(b, Timing) else b
    sa, sb = a.get("samples") or [], b.get("samples") or []
    if stat == "median" and sa and len(sa) == len(sb) and all(x > 0 for x in sb):
        return statistics.median(x / y for x, y in zip(sa, sb, strict=True))
    key = f"{stat}_s"
    if not b.get(key):
        return None
    return a[key] / b[key]


def min_over(timings: Sequence[Mapping]) -> dict | None:
    """Per round, the fastest of several functions measured in the same rounds (the bound is
    the fastest BLAS of the round), as a timing dict with ``samples``."""
    timings = [t for t in timings if t and t.get("samples")]
    if not timings:
        return None
    n = min(len(t["samples"]) for t in timings)
    samples = [min(t["samples"][r] for t in timings) for r in range(n)]
    first = min(t.get("first_s", 0.0) for t in timings)
    return Timing.from_samples(samples, first, min(t.get("calls", 1) for t in timings)).as_dict()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silences ``print`` from library code (spacelearn prints from ``subspaces``)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def calls_for(
    seconds_per_call: float,
    block_s: float = BLOCK_S,
    min_calls: int = MIN_CALLS,
    max_calls: int = MAX_CALLS,
) -> int:
    """Calls per block: enough to fill ``block_s``, within ``[min_calls, max_calls]``."""
    if seconds_per_call <= 0:
        return max_calls
    return max(min_calls, min(max_calls, math.ceil(block_s / seconds_per_call)))


def run_block(fn: Callable[[], object], calls: int) -> float:
    """Runs ``calls`` consecutive calls; returns the median call time in seconds."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_blocks(
    fns: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    min_rounds: int = 2,
    max_seconds: float | None = None,
    pause_s: float = PAUSE_S,
    block_s: float = BLOCK_S,
    min_calls: int = MIN_CALLS,
    max_calls: int = MAX_CALLS,
) -> dict[str, Timing]:
    """Times functions in steady-state blocks after a pause, alternating the order by round.

    Args:
      fns: name -> function of no arguments that returns when its work is done.
      rounds: number of rounds (one block of each function per round).
      min_rounds: rounds always run, whatever ``max_seconds`` says.
      max_seconds: stop after the round that passes this much time (None: no limit).
      pause_s: sleep before each block.
      block_s, min_calls, max_calls: a block has enough calls to last about ``block_s``.

    Returns:
      name -> :class:`Timing` whose ``samples`` are the rounds' median calls, in round order.
    """
    names = list(fns)
    first, calls = {}, {}
    for name in names:
        time.sleep(pause_s)
        t0 = time.perf_counter()
        fns[name]()
        first[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fns[name]()  # allocator and caches warm, lazy initialisation done
        calls[name] = calls_for(time.perf_counter() - t0, block_s, min_calls, max_calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    start = time.perf_counter()
    for r in range(max(rounds, 1)):
        for name in names if r % 2 == 0 else names[::-1]:
            time.sleep(pause_s)
            samples[name].append(run_block(fns[name], calls[name]))
        done = r + 1
        if max_seconds is not None and done >= min_rounds:
            if time.perf_counter() - start > max_seconds:
                break
    return {name: Timing.from_samples(samples[name], first[name], calls[name]) for name in names}


def result_in_subprocess(
    module: str,
    function: str,
    args: Sequence[object],
    *,
    env: Mapping[str, str],
    label: str,
    timeout: float | None = 900,
) -> object:
    """``benchmarks.<module>.<function>(*args)``, JSON-serialisable, run in a fresh interpreter
    with the environment ``env`` (for settings that take effect only at process start: malloc,
    XLA flags, OpenMP). ``args`` are Python literals (they travel as their ``repr``).

    Raises:
      RuntimeError: ``label`` and the child's last stderr line, when it fails or prints no result.
    """
    call = f"{function}({', '.join(repr(a) for a in args)})"
    code = (
        f"import json; from benchmarks.{module} import {function}; "
        f"print('RESULT' + json.dumps({call}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise RuntimeError(f"{label}: {tail}")
    return json.loads(lines[-1][len("RESULT") :])


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss_increase(fn: Callable[[], object], *, repeats: int = 2) -> int | None:
    """Peak resident memory above the current level while ``fn`` runs, in bytes.

    Resets the kernel's high-water mark (``/proc/self/clear_refs``, Linux), runs ``fn`` and
    reads ``VmHWM``. Memory an allocator kept from earlier calls is reused without showing
    here, so call this after a warm-up and read it as the extra memory one call needs. None
    where the kernel offers no reset.
    """
    gc.collect()
    base = _status_bytes("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    for _ in range(repeats):
        fn()
    peak = _status_bytes("VmHWM")
    if base is None or peak is None:
        return None
    return max(peak - base, 0)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas_libraries() -> list[dict]:
    try:
        import threadpoolctl
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "prefix", "version", "num_threads", "architecture")
    return [{k: info.get(k) for k in keys} for info in threadpoolctl.threadpool_info()]


def machine() -> dict:
    """The machine and software the numbers were measured on."""
    import jax

    info = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {
            name: _version(name)
            for name in ("jax", "jaxlib", "flax", "numpy", "scipy", "torch", "spacelearn")
        },
        "numpy_blas": _blas_libraries(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "openblas_env": {
            k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ
        },
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch_threads"] = None
    return info


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    min_rounds: int = 3,
    max_seconds: float | None = None,
) -> dict[str, Timing]:
    """The former name of :func:`time_blocks` (kept for callers): the same protocol, steady-state
    blocks after a pause, not call-by-call interleaving."""
    return time_blocks(fns, rounds=rounds, min_rounds=min_rounds, max_seconds=max_seconds)
