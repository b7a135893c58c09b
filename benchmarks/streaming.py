"""Streaming moments: throughput and memory over a stream of at least a million samples.

    python -m benchmarks.streaming [--samples N] [--dim D] [--batch B]

Host batches (float32, ``D`` latents and two quantities) are folded by
:func:`space_jax.stream_moments`. Reported: samples per second (compilation excluded, it is
timed apart), the same figure for the unavoidable products alone (``Zc.T @ Zc``, ``Zc.T @ Yc``,
``Yc.T @ Yc`` on one resident batch) through NumPy's BLAS and through XLA in this process: the
hardware bound, whichever is faster; and the
peak resident memory (``ru_maxrss``) after a quarter of the stream and after all of it, which
stay equal when memory does not grow with the number of samples.

The stream cycles through a few pre-generated batches so that the timing measures the fold, not
the random number generator; only the batch being folded is alive at any time.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterator

import jax
import numpy as np

import space_jax as sj

_POOL = 4  # distinct pre-generated batches the stream cycles through


def _rss_mib() -> float:
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _pool(D: int, m: tuple[int, ...], batch: int, seed: int = 0) -> list[tuple]:
    rng = np.random.default_rng(seed)
    mixes = [rng.normal(size=(D, mq)).astype(np.float32) / np.sqrt(D) for mq in m]
    pool = []
    for _ in range(_POOL):
        Z = rng.normal(size=(batch, D)).astype(np.float32) + 3.0
        Y = {
            f"q{i}": Z @ mix + 0.1 * rng.normal(size=(batch, mix.shape[1])).astype(np.float32)
            for i, mix in enumerate(mixes)
        }
        pool.append((Z, Y))
    return pool


def _stream(pool: list, n_samples: int, batch: int, marks: dict) -> Iterator[tuple]:
    """Yields ``n_samples`` samples in batches; records the peak memory after each quarter."""
    sent, i = 0, 0
    quarter = n_samples // 4
    while sent < n_samples:
        Z, Y = pool[i % len(pool)]
        size = min(batch, n_samples - sent)
        if size < batch:
            Z, Y = Z[:size], {q: y[:size] for q, y in Y.items()}
        yield Z, Y
        sent, i = sent + size, i + 1
        if "quarter" not in marks and sent >= quarter:
            marks["quarter"] = (sent, _rss_mib())


def _blas_seconds_per_batch(pool: list, repeats: int = 5) -> float:
    Z, Y = pool[0]
    yc = np.concatenate(list(Y.values()), axis=1)
    zc, yc = Z - Z.mean(0), yc - yc.mean(0)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        zc.T @ zc, zc.T @ yc, yc.T @ yc  # noqa: B018
        times.append(time.perf_counter() - t0)
    return min(times)


@jax.jit
def _products(zc, yc):
    return zc.T @ zc, zc.T @ yc, yc.T @ yc


def _xla_seconds_per_batch(pool: list, repeats: int = 5) -> float:
    Z, Y = pool[0]
    yc = np.concatenate(list(Y.values()), axis=1)
    zc, yc = jax.device_put((Z - Z.mean(0), yc - yc.mean(0)))
    jax.block_until_ready(_products(zc, yc))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(_products(zc, yc))
        times.append(time.perf_counter() - t0)
    return min(times)


def run(
    n_samples: int = 10**6, D: int = 256, m: tuple[int, ...] = (64, 64), batch: int = 8192
) -> dict:
    """Streams ``n_samples`` samples and reports throughput and memory.

    Returns:
      A dict: ``samples``, ``batches``, ``compile_s`` (first call per batch shape),
      ``stream_s``, ``samples_per_s``, ``products_numpy_samples_per_s``,
      ``products_xla_samples_per_s``, ``ratio_to_products`` (to the faster of the two),
      ``rss_mib_at_quarter``, ``rss_mib_at_end``, ``stream_gib`` (size of the streamed data)
      and the problem sizes.
    """
    pool = _pool(D, tuple(m), batch)
    n_batches = -(-n_samples // batch)

    # Compile for the full and the last (partial) batch shape outside the timed stream.
    t0 = time.perf_counter()
    warm = [pool[0]]
    if n_samples % batch:
        rest = n_samples % batch
        warm.append((pool[0][0][:rest], {q: y[:rest] for q, y in pool[0][1].items()}))
    jax.block_until_ready(sj.stream_moments([pool[0], *warm]))
    compile_s = time.perf_counter() - t0

    marks: dict = {}
    t0 = time.perf_counter()
    result = jax.block_until_ready(sj.stream_moments(_stream(pool, n_samples, batch, marks)))
    stream_s = time.perf_counter() - t0
    rss_end = _rss_mib()
    if int(result.count) != n_samples:
        raise RuntimeError(f"streamed {int(result.count)} samples, expected {n_samples}")

    rate = n_samples / stream_s
    numpy_rate = batch / _blas_seconds_per_batch(pool)
    xla_rate = batch / _xla_seconds_per_batch(pool)
    return {
        "samples": n_samples,
        "batches": n_batches,
        "D": D,
        "m": list(m),
        "batch": batch,
        "compile_s": compile_s,
        "stream_s": stream_s,
        "samples_per_s": rate,
        "products_numpy_samples_per_s": numpy_rate,
        "products_xla_samples_per_s": xla_rate,
        "ratio_to_products": rate / max(numpy_rate, xla_rate),
        "rss_mib_at_quarter": marks["quarter"][1],
        "rss_mib_at_end": rss_end,
        "stream_gib": n_samples * (D + sum(m)) * 4 / 2**30,
        "backend": jax.default_backend(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10**6)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--targets", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--json", action="store_true", help="print the raw dict as JSON")
    args = parser.parse_args(argv)
    out = run(args.samples, args.dim, tuple(args.targets), args.batch)
    if args.json:
        print(json.dumps(out))
        return out
    print(
        f"streamed {out['samples']:,} samples ({out['stream_gib']:.2f} GiB, D={out['D']}, "
        f"m={out['m']}) in {out['batches']} batches of {out['batch']} on {out['backend']}"
    )
    print(f"  compile (per batch shape, once): {out['compile_s']:.2f} s")
    print(
        f"  throughput: {out['samples_per_s']:,.0f} samples/s ({out['stream_s']:.2f} s); "
        f"ratio {out['ratio_to_products']:.2f} to the products alone "
        f"(NumPy BLAS {out['products_numpy_samples_per_s']:,.0f}, "
        f"XLA {out['products_xla_samples_per_s']:,.0f} samples/s)"
    )
    print(
        f"  peak RSS: {out['rss_mib_at_quarter']:.0f} MiB after a quarter, "
        f"{out['rss_mib_at_end']:.0f} MiB at the end"
    )
    return out


if __name__ == "__main__":
    main()
