"""Batch-safe, differentiable decompositions and solves (public as ``space_jax.linalg.*``).

Each is ``jnp.linalg``'s function of the same name on one matrix, computed by the batch-safe
LAPACK calls of :mod:`space_jax._lapack` (under ``vmap`` on CPU: one LAPACK call per item, never
jaxlib's threaded batched kernels; on GPU the batched solvers), with a ``custom_jvp`` made of
matrix products and the primal factors, so ``jvp``, ``grad``, ``vmap`` of either and either of
``vmap`` work and nest. Leading batch dimensions (``(..., m, n)``) are handled as ``vmap``.

The derivative rules are JAX's own (``jax._src.lax.linalg``) except where noted: ``lstsq``
differentiates as ``pinv(a) @ b`` (defined where the rank is locally constant, also at repeated
singular values, where differentiating the SVD divides by zero), and ``qr`` uses ``r^-1`` from a
triangular solve of the primal instead of a solve on the tangent.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from . import _lapack

__all__ = ["eigh", "eigvalsh", "lstsq", "pinv", "qr", "solve", "svd"]

_mm = functools.partial(jnp.matmul, precision=lax.Precision.HIGHEST)


def _h(x: jax.Array) -> jax.Array:
    return jnp.conj(jnp.swapaxes(x, -1, -2))


def _float(a, name: str, min_ndim: int = 2) -> jax.Array:
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.inexact):
        a = a.astype(jnp.result_type(float))
    if a.ndim < min_ndim:
        raise ValueError(
            f"{name}: expected an array of at least {min_ndim} dimensions (..., m, n), "
            f"got shape {a.shape}"
        )
    return a


def _batched(fn, n_batch: int):
    for _ in range(n_batch):
        fn = jax.vmap(fn)
    return fn


# --- eigh ----------------------------------------------------------------------------------


@jax.custom_jvp
def _eigh1(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _lapack.eigh(a)


@_eigh1.defjvp
def _eigh1_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    w, v = _eigh1(a)
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    wc = w.astype(a.dtype)
    f = 1.0 / (eye + wc[None, :] - wc[:, None]) - eye  # 1 / (w_j - w_i) off the diagonal
    vdv = _mm(_mm(_h(v), da), v)
    return (w, v), (jnp.real(jnp.diagonal(vdv)).astype(w.dtype), _mm(v, f * vdv))


@jax.jit
def eigh(a: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues (ascending) and eigenvectors of symmetric (Hermitian) matrices.

    ``jnp.linalg.eigh`` (the input symmetrised, ``(a + a^H) / 2``), batch-safe under ``vmap``.

    Args:
      a: ``(..., n, n)``.

    Returns:
      ``(w, v)``: ``w`` of shape ``(..., n)``, ascending; ``v`` of shape ``(..., n, n)``,
      the eigenvectors as columns.
    """
    a = _float(a, "a")
    if a.shape[-1] != a.shape[-2]:
        raise ValueError(f"a: expected square matrices (..., n, n), got shape {a.shape}")
    a = (a + _h(a)) / 2
    return _batched(_eigh1, a.ndim - 2)(a)


@jax.custom_jvp
def _eigvalsh1(a: jax.Array) -> jax.Array:
    return _lapack.eigvalsh(a)


@_eigvalsh1.defjvp
def _eigvalsh1_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    w, v = _eigh1(a)  # the derivative needs the eigenvectors: d w_i = v_i^H da v_i
    return w, jnp.real(jnp.sum(jnp.conj(v) * _mm(da, v), axis=-2)).astype(w.dtype)


@jax.jit
def eigvalsh(a: jax.typing.ArrayLike) -> jax.Array:
    """Eigenvalues (ascending) of symmetric matrices ``(..., n, n)``: ``(..., n)``.

    ``jnp.linalg.eigvalsh`` (the input symmetrised), batch-safe under ``vmap``. On CPU the
    eigenvectors are not computed (LAPACK's ``jobz='N'``); its derivatives compute them.
    """
    a = _float(a, "a")
    if a.shape[-1] != a.shape[-2]:
        raise ValueError(f"a: expected square matrices (..., n, n), got shape {a.shape}")
    a = (a + _h(a)) / 2
    return _batched(_eigvalsh1, a.ndim - 2)(a)


# --- svd -----------------------------------------------------------------------------------


@jax.custom_jvp
def _svd1(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return _lapack.svd(a, full_matrices=False)


@_svd1.defjvp
def _svd1_jvp(primals, tangents):
    # jax._src.lax.linalg._svd_jvp_rule, for one matrix.
    (a,), (da,) = primals, tangents
    u, s, vh = _svd1(a)
    ut, v = _h(u), _h(vh)
    s_row = s[None, :]
    ds_full = _mm(_mm(ut, da), v)
    ds = jnp.real(jnp.diagonal(ds_full)).astype(s.dtype)
    eye = jnp.eye(s.shape[-1], dtype=s.dtype)
    s_diffs = (s_row + s_row.T) * (s_row - s_row.T)
    f = (1.0 / (s_diffs + eye) - eye).astype(a.dtype)
    dss = s_row.astype(a.dtype) * ds_full
    sds = s_row.T.astype(a.dtype) * ds_full
    s_zeros = (s == 0).astype(s.dtype)
    s_inv = 1.0 / (s + s_zeros) - s_zeros
    du_dv_diag = 0.5 * (ds_full - _h(ds_full)) * jnp.diag(s_inv).astype(a.dtype)
    du = _mm(u, f * (dss + _h(dss)) + du_dv_diag)
    dv = _mm(v, f * (sds + _h(sds)))
    m, n = a.shape
    if m > n:
        dav = _mm(da, v)
        du = du + (dav - _mm(u, _mm(ut, dav))) / s_row.astype(a.dtype)
    if n > m:
        dahu = _mm(_h(da), u)
        dv = dv + (dahu - _mm(v, _mm(vh, dahu))) / s_row.astype(a.dtype)
    return (u, s, vh), (du, ds, _h(dv))


@jax.custom_jvp
def _svdvals1(a: jax.Array) -> jax.Array:
    return _lapack.svd(a, compute_uv=False)


@_svdvals1.defjvp
def _svdvals1_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    u, s, vh = _svd1(a)
    return s, jnp.real(jnp.diagonal(_mm(_mm(_h(u), da), _h(vh)))).astype(s.dtype)


@jax.custom_jvp
def _svd_full1(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return _lapack.svd(a, full_matrices=True)


@_svd_full1.defjvp
def _svd_full1_jvp(primals, tangents):
    raise NotImplementedError(
        "svd: the derivative with full_matrices=True is not defined (the extra columns are "
        "arbitrary); use full_matrices=False"
    )


@functools.partial(jax.jit, static_argnames=("full_matrices", "compute_uv"))
def svd(a: jax.typing.ArrayLike, *, full_matrices: bool = False, compute_uv: bool = True):
    """Singular value decomposition ``a = u @ diag(s) @ vh``, batch-safe under ``vmap``.

    ``jnp.linalg.svd``, with reduced factors by default.

    Args:
      a: ``(..., m, n)``.
      full_matrices: square ``u`` and ``vh`` (not differentiable, as in JAX).
      compute_uv: ``False`` returns ``s`` only.

    Returns:
      ``(u, s, vh)`` with shapes ``(..., m, r)``, ``(..., r)``, ``(..., r, n)`` for
      ``r = min(m, n)`` (``m`` and ``n`` with ``full_matrices``), ``s`` descending; or ``s``.
    """
    a = _float(a, "a")
    if not compute_uv:
        fn = _svdvals1
    else:
        fn = _svd_full1 if full_matrices else _svd1
    return _batched(fn, a.ndim - 2)(a)


# --- qr ------------------------------------------------------------------------------------


@jax.custom_jvp
def _qr1(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _lapack.qr(a)


@_qr1.defjvp
def _qr1_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    q, r = _qr1(a)
    m, n = a.shape
    if m < n:
        raise NotImplementedError(
            f"qr: the derivative is defined for tall or square matrices, got shape {a.shape}"
        )
    eye = jnp.eye(n, dtype=a.dtype)
    r_inv = _lapack.solve_triangular(r, eye, lower=False)
    dx_rinv = _mm(da, r_inv)
    qt_dx_rinv = _mm(_h(q), dx_rinv)
    lower = jnp.tril(qt_dx_rinv, -1)
    do = lower - _h(lower)  # skew-symmetric
    do = do + eye * (qt_dx_rinv - jnp.real(qt_dx_rinv).astype(a.dtype))
    dq = _mm(q, do - qt_dx_rinv) + dx_rinv
    dr = _mm(qt_dx_rinv - do, r)
    return (q, r), (dq, dr)


@jax.jit
def qr(a: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Reduced QR factorisation ``a = q @ r``, batch-safe under ``vmap``.

    Args:
      a: ``(..., m, n)`` (differentiable for ``m >= n``).

    Returns:
      ``(q, r)`` of shapes ``(..., m, k)`` and ``(..., k, n)``, ``k = min(m, n)``.
    """
    a = _float(a, "a")
    return _batched(_qr1, a.ndim - 2)(a)


# --- pinv and lstsq ------------------------------------------------------------------------


def _pinv_primal(a, rtol, hermitian):
    m, n = a.shape
    if m == 0 or n == 0:
        return jnp.zeros((n, m), a.dtype)
    if rtol is None:
        rtol = 10.0 * max(m, n) * jnp.finfo(a.dtype).eps
    if hermitian:
        w, v = _lapack.eigh((a + _h(a)) / 2)
        mag = jnp.abs(w)
        keep = mag > rtol * jnp.max(mag)
        w_inv = jnp.where(keep, 1.0 / jnp.where(keep, w, 1.0), 0.0).astype(a.dtype)
        return _mm(v * w_inv, _h(v))
    u, s, vh = _lapack.svd(a, full_matrices=False)
    keep = s > rtol * s[0]
    s_inv = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0).astype(a.dtype)
    return _mm(_h(vh) * s_inv, _h(u))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _pinv1(a, rtol, hermitian):
    return _pinv_primal(a, rtol, hermitian)


@_pinv1.defjvp
def _pinv1_jvp(rtol, hermitian, primals, tangents):
    # Golub and Pereyra (1973), as jax.numpy.linalg's pinv.
    (a,), (da,) = primals, tangents
    p = _pinv1(a, rtol, hermitian)
    if hermitian:
        a, da = (a + _h(a)) / 2, (da + _h(da)) / 2
    m, n = a.shape
    if m >= n:
        s = _mm(_mm(p, _h(p)), _h(da))
        t = _mm(_mm(_h(da), _h(p)), p)
        dp = -_mm(_mm(p, da), p) + s - _mm(_mm(s, a), p) + t - _mm(_mm(p, a), t)
    else:
        s = _mm(p, _mm(_h(p), _h(da)))
        t = _mm(_h(da), _mm(_h(p), p))
        dp = -_mm(p, _mm(da, p)) + s - _mm(s, _mm(a, p)) + t - _mm(p, _mm(a, t))
    return p, dp


def _static_tol(value, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, jax.core.Tracer) or not jnp.ndim(value) == 0:
        raise TypeError(f"{name}: expected a Python float or None (static), got {value!r}")
    value = float(value)
    if not value >= 0:
        raise ValueError(f"{name}: expected a cut-off >= 0, got {value}")
    return value


def pinv(
    a: jax.typing.ArrayLike, *, rtol: float | None = None, hermitian: bool = False
) -> jax.Array:
    """Moore-Penrose pseudo-inverse, batch-safe under ``vmap``.

    ``jnp.linalg.pinv``: singular values (``|eigenvalues|`` with ``hermitian``) at or below
    ``rtol`` times the largest count as zero.

    Args:
      a: ``(..., m, n)``.
      rtol: relative cut-off (static; default ``10 * max(m, n) * eps``).
      hermitian: ``a`` is symmetric (an eigendecomposition instead of an SVD).

    Returns:
      ``(..., n, m)``.
    """
    return _pinv_jit(a, _static_tol(rtol, "rtol"), bool(hermitian))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pinv_jit(a, rtol, hermitian):
    a = _float(a, "a")
    if hermitian and a.shape[-1] != a.shape[-2]:
        raise ValueError(f"a: hermitian=True needs square matrices, got shape {a.shape}")
    return _batched(lambda x: _pinv1(x, rtol, hermitian), a.ndim - 2)(a)


def lstsq(
    a: jax.typing.ArrayLike, b: jax.typing.ArrayLike, *, rcond: float | None = None
) -> jax.Array:
    """Minimum-norm least-squares solution of ``a @ x = b``, batch-safe under ``vmap``.

    ``jnp.linalg.lstsq(a, b, rcond)[0]``; differentiable as ``pinv(a) @ b``.

    Args:
      a: ``(..., m, n)``.
      b: ``(..., m)`` (one right-hand side) or ``(..., m, k)``, the same leading dimensions.
      rcond: relative cut-off of the singular values (static; default ``max(m, n) * eps``).

    Returns:
      ``x`` of shape ``(..., n)`` or ``(..., n, k)``.
    """
    return _lstsq_jit(a, b, _static_tol(rcond, "rcond"))


@functools.partial(jax.jit, static_argnums=(2,))
def _lstsq_jit(a, b, rcond):
    a = _float(a, "a")
    b = jnp.asarray(b)
    if b.ndim not in (a.ndim - 1, a.ndim) or b.shape[: a.ndim - 1] != a.shape[:-1]:
        raise ValueError(
            f"b: expected shape {a.shape[:-1]} or {a.shape[:-1]} + (k,) for a of shape "
            f"{a.shape}, got {b.shape}"
        )
    if rcond is None:
        rcond = float(jnp.finfo(a.dtype).eps) * max(a.shape[-2:])
    dtype = jnp.result_type(a, b)
    a, b = a.astype(dtype), b.astype(dtype)

    def one(a, b):
        return _mm(_pinv1(a, rcond, False), b)

    return _batched(one, a.ndim - 2)(a, b)


# --- solve ---------------------------------------------------------------------------------


def _solve1(a, b):
    # As jax.numpy.linalg.solve: one LU factorisation, reused by the derivative through
    # custom_linear_solve (whose transpose is the transposed solve, so no LAPACK call is ever
    # differentiated or transposed).
    lu, piv = _lapack.lu_factor(lax.stop_gradient(a))
    return lax.custom_linear_solve(
        lambda x: _mm(a, x),
        b,
        solve=lambda _, x: _lapack.lu_solve(lu, piv, x, trans=0),
        transpose_solve=lambda _, x: _lapack.lu_solve(lu, piv, x, trans=1),
    )


@jax.jit
def solve(a: jax.typing.ArrayLike, b: jax.typing.ArrayLike) -> jax.Array:
    """Solution ``x`` of the square system ``a @ x = b``, batch-safe under ``vmap``.

    Args:
      a: ``(..., n, n)``.
      b: ``(n,)`` (one right-hand side for every matrix), or ``(..., n, k)`` with leading
        dimensions that broadcast against ``a``'s (``jnp.linalg.solve``'s convention).

    Returns:
      ``(..., n)`` or ``(..., n, k)``.
    """
    a = _float(a, "a")
    b = jnp.asarray(b)
    n = a.shape[-1]
    if a.shape[-2] != n:
        raise ValueError(f"a: expected square matrices (..., n, n), got shape {a.shape}")
    dtype = jnp.result_type(a, b)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.result_type(float)
    a, b = a.astype(dtype), b.astype(dtype)
    if b.ndim == 1:
        if b.shape[0] != n:
            raise ValueError(f"b: expected shape ({n},) for a of shape {a.shape}, got {b.shape}")
        batch = a.shape[:-2]
        b = jnp.broadcast_to(b, (*batch, n))
    else:
        if b.shape[-2] != n:
            raise ValueError(
                f"b: expected shape (..., {n}, k) for a of shape {a.shape}, got {b.shape}"
            )
        batch = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        b = jnp.broadcast_to(b, (*batch, *b.shape[-2:]))
    a = jnp.broadcast_to(a, (*batch, n, n))
    return _batched(_solve1, len(batch))(a, b)
