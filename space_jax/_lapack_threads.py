"""One thread for the LAPACK library behind jaxlib's CPU decompositions.

jaxlib's CPU eigensolvers, SVDs and factorisations call the LAPACK that SciPy ships (for PyPI
wheels, an OpenBLAS built with its own pthreads pool). After every call, OpenBLAS's worker
threads busy-wait for the next one, for up to 2**28 cycles: measured on 2 cores
(``python -m benchmarks.spin``), a 256 x 256 ``eigh`` is followed by 80-140 ms of CPU time burnt
by a spinning worker within 200 ms, taken from whatever runs next (the rest of the XLA program,
the next training step, torch's backward pass). The matrices the library decomposes (D x D,
m x m) gain little from a second LAPACK thread, so the first time :mod:`space_jax` builds a
decomposition it sets that library to one thread.

* ``SPACE_JAX_LAPACK_THREADS=n`` in the environment chooses ``n`` threads instead; ``0`` leaves
  the library as it is.
* Only the BLAS libraries SciPy bundles are changed (NumPy's and torch's have their own); a
  SciPy linked against a system BLAS is left alone (set ``OPENBLAS_NUM_THREADS`` there).
* :func:`space_jax.linalg.limit_lapack_threads` does the same on demand.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

__all__ = ["ensure_lapack_threads", "limit_lapack_threads"]

_ENV = "SPACE_JAX_LAPACK_THREADS"
logger = logging.getLogger("space_jax.linalg")


def _scipy_blas_paths(info: list[dict]) -> list[str]:
    """File paths of the BLAS libraries in ``info`` that live in SciPy's distribution."""
    import scipy

    root = Path(scipy.__file__).resolve().parent
    homes = (root, root.parent / "scipy.libs", root / ".dylibs")
    paths = []
    for lib in info:
        path = Path(lib.get("filepath") or "").resolve()
        inside = any(h == path.parent or h in path.parents for h in homes)
        if lib.get("user_api") == "blas" and inside:
            paths.append(str(lib["filepath"]))
    return paths


def limit_lapack_threads(n: int = 1) -> list[str]:
    """Sets the LAPACK/BLAS library that jaxlib's CPU decompositions use (SciPy's) to ``n``
    threads, for the whole process. Returns the file paths of the libraries changed (empty when
    SciPy links a BLAS outside its own distribution, or threadpoolctl cannot see it)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"limit_lapack_threads: n must be an int >= 1, got {n!r}")
    try:
        import scipy.linalg.cython_lapack  # noqa: F401  (what jaxlib loads; load it first)
        import threadpoolctl
    except ImportError as exc:  # pragma: no cover - both are dependencies
        logger.info("LAPACK threads left as they are: %s", exc)
        return []
    controller = threadpoolctl.ThreadpoolController()
    paths = _scipy_blas_paths(controller.info())
    if not paths:
        logger.info(
            "LAPACK threads left as they are: SciPy's BLAS is not one of its own bundled libraries"
        )
        return []
    controller.select(filepath=paths).limit(limits=n)
    logger.debug("LAPACK (%s) set to %d thread(s)", ", ".join(paths), n)
    return paths


@functools.cache
def ensure_lapack_threads() -> None:
    """Applies ``SPACE_JAX_LAPACK_THREADS`` (default 1) once per process."""
    raw = os.environ.get(_ENV, "1").strip()
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(
            f"{_ENV} must be an integer (0: leave LAPACK's threads alone), got {raw!r}"
        ) from None
    if n < 0:
        raise ValueError(f"{_ENV} must be >= 0 (0: leave LAPACK's threads alone), got {n}")
    if n:
        limit_lapack_threads(n)
