"""CPU time that thread pools burn after a call returns (spin-waiting for the next one).

    python -m benchmarks.spin [--repeats 7] [--window 0.2]    # prints one JSON object

For each call: run it, pause 0.5 s (every pool idles), run it again, then sleep ``--window``
seconds and read the process's CPU time (user + system) over that sleep. The caller does nothing
then, so whatever CPU time accrues is pool threads spinning; on a 2-core machine that is taken
from the next call (the rest of an XLA program, torch's backward pass). Median over
``--repeats``. The cases:

* ``idle``: nothing (the floor);
* ``XLA product``: a jitted ``Z.T @ Z`` (4096 x 256);
* ``eigh, LAPACK at N threads``: a jitted :func:`space_jax.linalg.eigh` of a 256 x 256 matrix,
  SciPy's LAPACK (the one jaxlib calls) at as many threads as cores (what jaxlib gives) and at
  one thread (what :mod:`space_jax` sets, see :mod:`space_jax._lapack_threads`);
* ``torch product``: the same product in torch (its OpenMP workers), when torch is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from collections.abc import Callable

__all__ = ["burnt_ms", "run"]


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def burnt_ms(fn: Callable[[], object], *, window: float = 0.2, repeats: int = 7) -> float:
    """Median CPU milliseconds the process uses in the ``window`` seconds after ``fn`` returns."""
    out = []
    for _ in range(repeats):
        fn()
        time.sleep(0.5)
        fn()
        c0 = _cpu_seconds()
        time.sleep(window)
        out.append((_cpu_seconds() - c0) * 1e3)
    return statistics.median(out)


def run(*, window: float = 0.2, repeats: int = 7) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from space_jax import linalg

    rng = np.random.default_rng(0)
    z = rng.standard_normal((4096, 256)).astype(np.float32)
    a = z.T @ z
    zj, aj = jnp.asarray(z), jnp.asarray(a)
    gram = jax.jit(lambda z: z.T @ z)
    eigh = jax.jit(lambda a: linalg.eigh(a)[0])
    cores = os.cpu_count() or 1
    res: dict = {"window s": window, "repeats": repeats, "cores": cores}
    res["idle ms"] = burnt_ms(lambda: None, window=window, repeats=repeats)
    res["XLA product ms"] = burnt_ms(
        lambda: gram(zj).block_until_ready(), window=window, repeats=repeats
    )
    for n in (cores, 1):
        linalg.limit_lapack_threads(n)
        res[f"eigh, LAPACK at {n} thread(s) ms"] = burnt_ms(
            lambda: eigh(aj).block_until_ready(), window=window, repeats=repeats
        )
    try:
        import torch
    except ImportError:
        res["torch product ms"] = None
    else:
        zt = torch.from_numpy(z)
        res["torch product ms"] = burnt_ms(lambda: zt.T @ zt, window=window, repeats=repeats)
        res["torch threads"] = torch.get_num_threads()
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--window", type=float, default=0.2, help="seconds after the call")
    args = p.parse_args(argv)
    res = run(window=args.window, repeats=args.repeats)
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
