"""Timing, peak memory and the machine description.

Timing protocol: each function is called once on its own (the first call: for a jitted JAX
function that is trace + compile + run, reported apart), once more to warm caches, then the
functions run in interleaved rounds, each once per round in a rotating order, so that a change
in machine load during the measurement affects every implementation alike; the figure reported
is the median over rounds (the minimum is kept in the JSON file too). Functions must return only
when their work is done (``jax.block_until_ready``; torch on CPU is synchronous).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass

__all__ = [
    "Timing",
    "machine",
    "peak_rss_increase",
    "quiet",
    "time_interleaved",
]


@dataclass(frozen=True)
class Timing:
    """Timing of one function: median and minimum over rounds, and its first call."""

    median_s: float
    min_s: float
    first_s: float
    rounds: int

    @property
    def compile_s(self) -> float:
        """First call minus a steady call: tracing and compilation for a jitted function."""
        return max(self.first_s - self.median_s, 0.0)

    def as_dict(self) -> dict:
        return {**asdict(self), "compile_s": self.compile_s}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silences ``print`` from library code (spacelearn prints from ``subspaces``)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    min_rounds: int = 3,
    max_seconds: float | None = None,
) -> dict[str, Timing]:
    """Times functions in interleaved rounds.

    Args:
      fns: name -> function of no arguments that returns when its work is done.
      rounds: number of rounds (each function once per round).
      min_rounds: rounds always run, whatever ``max_seconds`` says.
      max_seconds: stop after the round that passes this much time (None: no limit).

    Returns:
      name -> :class:`Timing`.
    """
    names = list(fns)
    first = {}
    for name in names:
        t0 = time.perf_counter()
        fns[name]()
        first[name] = time.perf_counter() - t0
    for name in names:  # a second call: allocator and caches warm, lazy initialisation done
        fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    start = time.perf_counter()
    for r in range(max(rounds, 1)):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
        done = r + 1
        if max_seconds is not None and done >= min_rounds:
            if time.perf_counter() - start > max_seconds:
                break
    return {
        name: Timing(
            median_s=statistics.median(samples[name]),
            min_s=min(samples[name]),
            first_s=first[name],
            rounds=len(samples[name]),
        )
        for name in names
    }


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
