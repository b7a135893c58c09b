"""The ``n`` largest eigenpairs of a symmetric matrix, without the whole decomposition.

The isotropy term needs only the ``n_dir`` leading eigenpairs of a ``D x D`` matrix, but
jaxlib's CPU ``eigh`` (LAPACK ``?syevd``) computes all ``D`` eigenvectors and jaxlib exposes no
subset solver (``?syevr``). On CPU, from :data:`TOP_EIGH_MIN` columns on and for ``n`` at most
a quarter of them, this module computes them from LAPACK pieces jaxlib does expose:

1. the tridiagonal reduction ``A = Q T Q.T`` (``?sytrd``, :func:`jax.lax.linalg.tridiagonal`);
2. the ``n`` largest eigenvalues of ``T`` by multisection on Sturm counts (:func:`_top_values`:
   several points per interval and step, all in one pass), accurate to a few ``eps * |T|``
   like LAPACK's bisection;
3. their eigenvectors by inverse iteration: two solves with ``T - sigma_j I`` (``sigma_j`` just
   above the computed eigenvalue), all ``n`` shifted systems as ONE block-diagonal tridiagonal
   solve (``?gtsv``), each followed by a QR that keeps the block orthonormal (so clusters of
   close eigenvalues span their invariant subspace), then a Rayleigh-Ritz step (an ``n x n``
   ``eigh``) that turns the block into eigenvectors;
4. back to ``A``'s basis with the reflectors of step 1 (``?ormqr`` on the ``D x n`` block only).

Measured on 2 CPU cores for ``n = 32`` (jitted, steady-state blocks, one machine with AVX-512):
1.7-1.9 against 3.4-3.8 ms for LAPACK's ``eigh`` at ``256 x 256``, 6.9-9.0 against 19-23 ms at
``512 x 512`` (of which the tridiagonal reduction takes 1.0 and 5.4 ms); residuals
``|A v - lambda v|`` and orthogonality within 2.5x of LAPACK's. Matrices below 128 columns gain
nothing, and
elsewhere (GPUs) the full decomposition is kept. Every LAPACK call goes through
:mod:`space_jax._lapack`, so the result is batch-safe under ``vmap``. No derivative rule: the
callers (:mod:`space_jax.linalg`) define their own from the eigenpairs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _lapack

__all__ = ["ALL_VALUES_MIN", "TOP_EIGH_MIN", "top_eigh", "top_eigvalsh"]

# Columns from which the tridiagonal route is taken (on CPU, n <= D / 4). Measured as above at
# n = 32: 0.8 against 0.95 ms at D = 128 (eigenvalues only: 0.31 against 0.43), 1.3 against
# 1.8 ms at D = 192; at D = 64 (n = 16) the whole decomposition is faster (0.26 against 0.34).
TOP_EIGH_MIN = 128
_HALF = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))
_ITERATIONS = 2  # inverse iterations; each gains a factor |lambda - sigma| / gap ~ eps / gap


# Columns from which all eigenvalues, or any number of them, come faster from the tridiagonal
# route than from LAPACK (eigenvalues only): measured as above, all of them took 1.6-1.7
# against 2.0-2.1 ms at D = 256 and 8.4 against 12.2 ms at D = 512, the same at D = 128.
ALL_VALUES_MIN = 256


def _worth_it(d: int, n: int) -> bool:
    return d >= TOP_EIGH_MIN and 4 * n <= d


def _values_worth_it(d: int, n: int) -> bool:
    return _worth_it(d, n) or d >= ALL_VALUES_MIN


def _full(a: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    w, v = _lapack.eigh(a)
    return w[::-1][:n], v[:, ::-1][:, :n]


# Multisection: each step splits every target's interval at _POINTS points (2 bits a step),
# evaluated in ONE Sturm pass for all targets. Measured on 2 cores for n = 32 (jitted, steady
# state): 0.17 against 0.42 ms for jax.scipy.linalg.eigh_tridiagonal's bisection at D = 256,
# 0.29 against 0.82 ms at D = 512. More points per step (7, 15) or a longer unrolled Sturm
# block (8, 16 steps) were slower there.
_POINTS = 3
_STURM_UNROLL = 4


def _sturm_counts(d, e_sq, pivmin, x):
    """Eigenvalues of ``T`` below each entry of ``x`` (any shape): the negative pivots of
    ``T - x I = L D L.T``, each pivot kept at least ``pivmin`` away from zero (LAPACK's
    ``?laebz`` recurrence), so no division by zero and no overflow."""

    def step(carry, de):
        q, count = carry
        di, ei_sq = de
        q = di - ei_sq / q - x
        negative = q <= pivmin
        return (jnp.where(negative, jnp.minimum(q, -pivmin), q), count + negative), None

    q = d[0] - x
    negative = q <= pivmin
    carry = (jnp.where(negative, jnp.minimum(q, -pivmin), q), negative.astype(jnp.int32))
    (_, count), _ = lax.scan(step, carry, (d[1:], e_sq), unroll=_STURM_UNROLL)
    return count


def _top_values(d: jax.Array, e: jax.Array, n: int) -> jax.Array:
    """The ``n`` largest eigenvalues, descending, of the symmetric tridiagonal ``T`` with
    diagonal ``d`` ``(D,)`` and off-diagonal ``e`` ``(D - 1,)``: multisection from the
    Gershgorin interval until every interval is at most ``eps * |T|`` wide (as LAPACK's and
    ``jax.scipy.linalg.eigh_tridiagonal``'s bisection), at most ``nmant + 1`` bits."""
    size, dtype = d.shape[0], d.dtype
    finfo = np.finfo(dtype)
    e_abs, e_sq = jnp.abs(e), e * e
    radius = jnp.concatenate([e_abs[:1], e_abs[:-1] + e_abs[1:], e_abs[-1:]])
    top, bottom = jnp.max(d + radius), jnp.min(d - radius)
    t_norm = jnp.maximum(jnp.abs(bottom), jnp.abs(top))
    safemin = max(1.0 / float(finfo.max), (1.0 + float(finfo.eps)) * float(finfo.tiny))
    pivmin = safemin * jnp.maximum(1, jnp.max(e_sq, initial=0.0))
    tolerance = finfo.eps * t_norm
    slack = 2.1 * (size * finfo.eps * t_norm + 2 * pivmin)  # outside rounding of the bounds
    target = jnp.arange(size - n, size, dtype=jnp.int32)  # ascending indices of the wanted
    lower = jnp.full((n,), bottom - slack, dtype)
    upper = jnp.full((n,), top + slack, dtype)
    fractions = jnp.arange(1, _POINTS + 1, dtype=dtype)[:, None] / (_POINTS + 1)
    bits = int(np.log2(_POINTS + 1))
    max_steps = -(-(finfo.nmant + 1) // bits) + 1

    def unfinished(state):
        step, lower, upper = state
        return (step < max_steps) & (jnp.max(upper - lower) > tolerance)  # NaN: stops

    def split(state):
        step, lower, upper = state
        points = lower + (upper - lower) * fractions  # (_POINTS, n)
        below = _sturm_counts(d, e_sq, pivmin, points.reshape(-1)).reshape(points.shape)
        below = below <= target  # the target's eigenvalue lies at or above the point
        lower = jnp.max(jnp.where(below, points, lower), axis=0)
        upper = jnp.min(jnp.where(below, upper, points), axis=0)
        return step + 1, lower, upper

    _, lower, upper = lax.while_loop(unfinished, split, (0, lower, upper))
    return (0.5 * (lower + upper))[::-1]


@functools.cache
def _tridiagonal_fn():
    return _lapack._batch_safe(lambda a: tuple(lax.linalg.tridiagonal(a, lower=True)))


@functools.cache
def _tridiagonal_solve_fn():
    return _lapack._batch_safe(lax.linalg.tridiagonal_solve)


@functools.cache
def _ormqr_fn():
    return _lapack._batch_safe(lambda a, taus, c: lax.linalg.ormqr(a, taus, c))


@functools.cache
def _start_block(size: int, n: int) -> np.ndarray:
    """The fixed ``(size, n)`` start block of the inverse iteration: Gaussian, seeded, so
    results are deterministic. A constant of the program, where ``jax.random.normal`` would
    run its generator on every call (0.2-0.3 ms at ``256 x 32``, 2 cores)."""
    block = np.random.default_rng(0).standard_normal((size, n))
    block.flags.writeable = False  # shared by every trace
    return block


def _shifted_solves(d, e, shifts, x):
    """``(T - shifts[j] I)^-1 x[:, j]`` for every ``j``: ONE tridiagonal system of size
    ``n * D`` made of the ``n`` shifted systems, decoupled by zeros (no batched LAPACK call)."""
    size, n = d.shape[0], shifts.shape[0]
    zero = jnp.zeros((1,), d.dtype)
    lower = jnp.tile(jnp.concatenate([zero, e]), n)
    upper = jnp.tile(jnp.concatenate([e, zero]), n)
    diag = (d[None, :] - shifts[:, None]).reshape(-1)
    sol = _tridiagonal_solve_fn()(lower, diag, upper, x.T.reshape(-1, 1))
    return sol.reshape(n, size).T


def _tridiagonal_product(d, e, x):
    """``T @ x`` for the symmetric tridiagonal ``T`` of diagonal ``d``, off-diagonal ``e``."""
    zero = jnp.zeros((1, x.shape[1]), x.dtype)
    below = jnp.concatenate([zero, e[:, None] * x[:-1]])
    above = jnp.concatenate([e[:, None] * x[1:], zero])
    return d[:, None] * x + below + above


def _cpu_top_eigh(a: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    size, dtype = a.shape[-1], a.dtype
    reflectors, d, e, taus = _tridiagonal_fn()(a)
    lam = _top_values(d, e, n)
    # Shifts just above each eigenvalue, distinct within clusters, at least one ulp of |T| away.
    scale = jnp.max(jnp.abs(d)) + 2.0 * jnp.max(jnp.abs(e), initial=0.0)
    scale = jnp.where(scale > 0, scale, jnp.ones((), dtype))
    shifts = lam + jnp.finfo(dtype).eps * scale * jnp.arange(1, n + 1, dtype=dtype)
    x = jnp.asarray(_start_block(size, n), dtype)
    for _ in range(_ITERATIONS):
        x = _lapack.qr(_shifted_solves(d, e, shifts, x))[0]
    h = x.T @ _tridiagonal_product(d, e, x)
    _, s = _lapack.eigh(0.5 * (h + h.T))
    y = x @ s[:, ::-1]  # eigenvectors of T, by descending Ritz value
    v = jnp.concatenate([y[:1], _ormqr_fn()(reflectors[1:, :-1], taus, y[1:])])
    return lam, v


def top_eigh(a: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """``(lambda, v)``: the ``n`` largest eigenvalues of a symmetric ``(D, D)`` matrix,
    descending ``(n,)``, and their eigenvectors ``(D, n)`` (orthonormal columns). ``a`` is
    symmetrised first. ``n`` is static, at most ``D``."""
    if a.dtype in _HALF:  # LAPACK and the bisection in float32, as space_jax._lapack does
        lam, v = top_eigh(a.astype(jnp.float32), n)
        return lam.astype(a.dtype), v.astype(a.dtype)
    a = 0.5 * (a + a.T)
    if not _worth_it(a.shape[-1], n):
        return _full(a, n)
    return lax.platform_dependent(
        a, cpu=lambda a: _cpu_top_eigh(a, n), default=lambda a: _full(a, n)
    )


def top_eigvalsh(a: jax.Array, n: int) -> jax.Array:
    """The ``n`` largest eigenvalues of a symmetric ``(D, D)`` matrix, descending (``a`` is
    symmetrised first); no eigenvectors are computed. ``n = D`` gives the whole spectrum (on
    CPU from :data:`ALL_VALUES_MIN` columns on by the tridiagonal route too)."""
    if a.dtype in _HALF:
        return top_eigvalsh(a.astype(jnp.float32), n).astype(a.dtype)
    a = 0.5 * (a + a.T)
    if not _values_worth_it(a.shape[-1], n):
        return _lapack.eigvalsh(a)[::-1][:n]

    def cpu(a):
        _, d, e, _ = _tridiagonal_fn()(a)
        return _top_values(d, e, n)

    return lax.platform_dependent(a, cpu=cpu, default=lambda a: _lapack.eigvalsh(a)[::-1][:n])
