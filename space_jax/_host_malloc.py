"""Large host buffers kept by glibc's malloc instead of mapped afresh on every call.

XLA's CPU client takes every result and temporary buffer from ``malloc``. glibc serves a request
above its *mmap threshold* with a fresh ``mmap`` and unmaps it on ``free``; the threshold adapts
to the sizes freed, but never beyond 32 MiB on 64-bit Linux. So a jitted function whose buffers
are larger (latents of ``(16384, 512)`` float32 are exactly 32 MiB) faults every page of each
buffer back in on every call: measured on 2 cores, ``z * 2`` on a 32 MiB array took 13-17 ms
with glibc's defaults and 2 ms with the heap reused; the combined loss's forward and backward at
``B = 16384, D = 512`` 167 ms and 127 ms.

So the first time :mod:`space_jax` builds a computation it raises, for the process, glibc's mmap
threshold to 128 MiB and its trim threshold (how much free memory the heap keeps instead of
returning it to the system) to twice that, with ``mallopt``. The cost is memory: up to the trim
threshold of freed memory per malloc arena stays in the process for reuse.

* ``SPACE_JAX_MMAP_THRESHOLD=n`` in the environment (bytes) chooses ``n`` instead; ``0`` leaves
  malloc as it is.
* It is left as it is also where the process already chose (``MALLOC_MMAP_THRESHOLD_``,
  ``MALLOC_TRIM_THRESHOLD_``, or those thresholds in ``GLIBC_TUNABLES``), and on every C library
  but glibc (macOS, Windows, musl).
* Buffers above 64 MiB allocated by XLA's worker threads are mapped afresh whatever the
  threshold (glibc's per-thread heaps are at most 64 MiB each).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import sys

__all__ = ["ensure_host_malloc", "set_mmap_threshold"]

_ENV = "SPACE_JAX_MMAP_THRESHOLD"
DEFAULT_THRESHOLD = 128 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
_INT_MAX = 2**31 - 1  # mallopt takes an int
logger = logging.getLogger("space_jax")


def _glibc_mallopt():
    """glibc's ``mallopt``, or None on any other C library."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - a glibc without it
        return None


def _chosen_by_the_process() -> str | None:
    """The environment variable through which the process set glibc's thresholds, if any."""
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        if name in os.environ:
            return name
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "mmap_threshold" in tunables or "trim_threshold" in tunables:
        return "GLIBC_TUNABLES"
    return None


def set_mmap_threshold(n_bytes: int) -> bool:
    """Sets glibc's mmap threshold to ``n_bytes`` and its trim threshold to twice that (at most
    ``2**31 - 1``), for the whole process. Returns whether malloc took both (False on a C
    library other than glibc)."""
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, int) or not 0 < n_bytes <= _INT_MAX:
        raise ValueError(
            f"set_mmap_threshold: n_bytes must be an int in [1, {_INT_MAX}], got {n_bytes!r}"
        )
    mallopt = _glibc_mallopt()
    if mallopt is None:
        logger.debug("malloc left as it is: not glibc")
        return False
    trim = min(2 * n_bytes, _INT_MAX)
    ok = bool(mallopt(_M_MMAP_THRESHOLD, n_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
    logger.debug(
        "glibc malloc: mmap threshold %d bytes, trim threshold %d bytes (%s)",
        n_bytes,
        trim,
        "set" if ok else "refused",
    )
    return ok


@functools.cache
def ensure_host_malloc() -> None:
    """Applies ``SPACE_JAX_MMAP_THRESHOLD`` (default 128 MiB) once per process."""
    raw = os.environ.get(_ENV, str(DEFAULT_THRESHOLD)).strip()
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(
            f"{_ENV} must be an integer number of bytes (0: leave malloc alone), got {raw!r}"
        ) from None
    if not 0 <= n <= _INT_MAX:
        raise ValueError(
            f"{_ENV} must be in [0, {_INT_MAX}] bytes (0: leave malloc alone), got {n}"
        )
    chosen = _chosen_by_the_process()
    if chosen is not None:
        logger.debug("malloc left as it is: the process sets its thresholds (%s)", chosen)
    elif n:
        set_mmap_threshold(n)
