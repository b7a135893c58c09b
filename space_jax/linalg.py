"""Singular value decompositions with a choice of algorithm.

Four solvers, chosen by the static keyword ``solver``:

* ``"svd"``: LAPACK's divide-and-conquer SVD (``jnp.linalg.svd``).
* ``"eigen"``: eigendecomposition of a Gram matrix (``A @ A.T`` for left vectors, ``A.T @ A``
  for right vectors and singular values). Exact in exact arithmetic, but squares the condition
  number: singular values below ``sqrt(eps) * s_max`` lose their relative accuracy.
* ``"lowrank"``: randomised SVD with subspace iterations, the algorithm of ``torch.svd_lowrank``
  (sketch of ``rank`` columns, default 6, and ``n_iter`` power iterations, default 2). An
  approximation: only ``min(rank, H, W)`` triplets are returned.
* ``"auto"``: exact, picks the cheaper route by shape. Singular values of a long or wide matrix
  come from the eigenvalues of the small Gram matrix; vectors come from ``"svd"`` (LAPACK already
  reduces a tall matrix by QR first). Unlike spacelearn's ``"auto"``, it never switches to the
  randomised sketch.

Every solver returns the reduced factorisation: for ``A`` of shape ``(H, W)`` and
``r = min(H, W)`` (``min(rank, r)`` for ``"lowrank"``), ``U`` is ``(H, r)``, ``S`` is ``(r,)``
in descending order and ``Vh`` is ``(r, W)``. Pass ``full_matrices=True`` to get square ``U`` and
``Vh`` from the ``"svd"`` route.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp

from ._checks import as_float
from ._decompositions import eigh, eigvalsh, lstsq, pinv, qr, solve, svd
from ._lapack_threads import limit_lapack_threads
from ._spmd import batch_gram
from ._top_eigh import top_eigh, top_eigvalsh

__all__ = [
    "Solver",
    "eigh",
    "eigvalsh",
    "full",
    "gram",
    "left",
    "limit_lapack_threads",
    "lstsq",
    "pinv",
    "qr",
    "residual_gram_eigvals",
    "right",
    "singular_values",
    "solve",
    "svd",
    "symmetric_eigvals",
]

Solver = Literal["auto", "svd", "eigen", "lowrank"]
_SOLVERS = ("auto", "svd", "eigen", "lowrank")
# "auto" uses the Gram route for singular values once one side is this many times the other.
_GRAM_ASPECT = 2


def _check(a, solver: str, name: str = "A") -> jax.Array:
    if solver not in _SOLVERS:
        raise ValueError(f"solver: expected one of {_SOLVERS}, got {solver!r}")
    a = as_float(a, name)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a matrix of shape (H, W), got shape {a.shape}")
    return a


def _eigh_desc(g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues (clamped at 0) and eigenvectors of a Gram matrix, descending."""
    w, v = eigh(g)
    return jnp.maximum(w[::-1], 0.0), v[:, ::-1]


def _gram_singular_values(a: jax.Array) -> jax.Array:
    h, w = a.shape
    g = a.T @ a if h >= w else a @ a.T
    return jnp.sqrt(jnp.maximum(eigvalsh(g)[::-1], 0.0))


def _eigen_left(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    r = min(a.shape)
    s2, u = _eigh_desc(a @ a.T)
    return u[:, :r], jnp.sqrt(s2[:r])


def _eigen_right(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    r = min(a.shape)
    s2, v = _eigh_desc(a.T @ a)
    return v[:, :r].T, jnp.sqrt(s2[:r])


def _eigen_full(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    # Eigenvectors of the smaller Gram matrix; the other side follows as A v / s. Directions
    # with s == 0 have no defined partner and come back as zero vectors.
    h, w = a.shape
    if h >= w:
        vh, s = _eigen_right(a)
        safe = jnp.where(s > 0, s, 1.0)
        u = jnp.where(s > 0, (a @ vh.T) / safe, 0.0)
        return u, s, vh
    u, s = _eigen_left(a)
    safe = jnp.where(s > 0, s, 1.0)
    vh = jnp.where(s[:, None] > 0, (u.T @ a) / safe[:, None], 0.0)
    return u, s, vh


def _lowrank(
    a: jax.Array, rank: int, n_iter: int, key: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Randomised SVD (Halko et al. 2011, algorithm 4.4), as ``torch.svd_lowrank``."""
    if key is None:
        key = jax.random.PRNGKey(0)
    transpose = a.shape[0] < a.shape[1]
    m = a.T if transpose else a
    q = min(rank, *m.shape)
    omega = jax.random.normal(key, (m.shape[1], q), dtype=m.dtype)
    basis, _ = qr(m @ omega)
    for _ in range(n_iter):
        basis, _ = qr(m.T @ basis)
        basis, _ = qr(m @ basis)
    ub, s, vh = svd(basis.T @ m)
    u = basis @ ub
    if transpose:
        return vh.T, s, u.T
    return u, s, vh


def full(
    a: jax.typing.ArrayLike,
    *,
    solver: Solver = "auto",
    full_matrices: bool = False,
    n_iter: int = 2,
    rank: int = 6,
    key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Singular value decomposition ``A = U @ diag(S) @ Vh``.

    Args:
      a: matrix of shape ``(H, W)``.
      solver: ``"auto"``, ``"svd"``, ``"eigen"`` or ``"lowrank"`` (static).
      full_matrices: square ``U`` and ``Vh`` (``"svd"`` and ``"auto"`` only).
      n_iter: power iterations of ``"lowrank"``.
      rank: sketch size of ``"lowrank"``.
      key: PRNG key of ``"lowrank"`` (default ``PRNGKey(0)``, so results are reproducible).

    Returns:
      ``(U, S, Vh)`` with shapes ``(H, r)``, ``(r,)``, ``(r, W)``; ``S`` descending.
    """
    a = _check(a, solver)
    if solver == "lowrank":
        return _lowrank(a, rank, n_iter, key)
    if solver == "eigen":
        return _eigen_full(a)
    return tuple(svd(a, full_matrices=full_matrices))


def left(
    a: jax.typing.ArrayLike,
    *,
    solver: Solver = "auto",
    full_matrices: bool = False,
    n_iter: int = 2,
    rank: int = 6,
    key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Left singular vectors and singular values.

    Args:
      a: matrix of shape ``(H, W)``.
      solver, full_matrices, n_iter, rank, key: as :func:`full`.

    Returns:
      ``(U, S)``: ``U`` of shape ``(H, r)`` (columns are the vectors), ``S`` of shape ``(r,)``.
    """
    a = _check(a, solver)
    if solver == "eigen":
        return _eigen_left(a)
    u, s, _ = full(a, solver=solver, full_matrices=full_matrices, n_iter=n_iter, rank=rank, key=key)
    return u, s


def right(
    a: jax.typing.ArrayLike,
    *,
    solver: Solver = "auto",
    full_matrices: bool = False,
    n_iter: int = 2,
    rank: int = 6,
    key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Right singular vectors (as rows) and singular values.

    Args:
      a: matrix of shape ``(H, W)``.
      solver, full_matrices, n_iter, rank, key: as :func:`full`.

    Returns:
      ``(Vh, S)``: ``Vh`` of shape ``(r, W)`` (rows are the vectors), ``S`` of shape ``(r,)``.
    """
    a = _check(a, solver)
    if solver == "eigen":
        return _eigen_right(a)
    _, s, vh = full(
        a, solver=solver, full_matrices=full_matrices, n_iter=n_iter, rank=rank, key=key
    )
    return vh, s


def singular_values(
    a: jax.typing.ArrayLike,
    *,
    solver: Solver = "auto",
    n_iter: int = 2,
    rank: int = 6,
    key: jax.Array | None = None,
) -> jax.Array:
    """Singular values of ``a`` in descending order.

    Args:
      a: matrix of shape ``(H, W)``.
      solver, n_iter, rank, key: as :func:`full`.

    Returns:
      ``S`` of shape ``(min(H, W),)`` (``(min(rank, H, W),)`` for ``"lowrank"``).
    """
    a = _check(a, solver)
    h, w = a.shape
    if solver == "eigen" or (solver == "auto" and max(h, w) >= _GRAM_ASPECT * min(h, w)):
        return _gram_singular_values(a)
    if solver == "lowrank":
        return _lowrank(a, rank, n_iter, key)[1]
    return svd(a, compute_uv=False)


@jax.custom_vjp
def gram(x: jax.Array) -> jax.Array:
    """Gram matrix ``x.T @ x`` of shape ``(D, D)`` for ``x`` of shape ``(B, D)``.

    Its derivative is one ``B x D x D`` product, ``x @ (C + C.T)`` for a cotangent ``C``; the
    automatic derivative of ``x.T @ x`` computes two.
    """
    return batch_gram(x)


def _gram_fwd(x):
    return batch_gram(x), x


def _gram_bwd(x, cotangent):
    return (x @ (cotangent + cotangent.T),)


gram.defvjp(_gram_fwd, _gram_bwd)


@jax.custom_vjp
def symmetric_eigvals(m: jax.Array) -> jax.Array:
    """Eigenvalues of a symmetric ``(D, D)`` matrix, descending.

    The derivative of ``sum_i g_i * lambda_i`` is ``V diag(g) V.T``, which is defined also when
    eigenvalues repeat (a projected Gram matrix always has a repeated zero eigenvalue, where the
    automatic derivative of ``eigh`` divides by zero).
    """
    return eigvalsh(m)[::-1]  # without differentiation, no eigenvectors


def _sym_eigh(m):
    w, v = eigh(m)  # eigh symmetrises its input
    return w[::-1], v[:, ::-1]


def _symmetric_eigvals_fwd(m):
    w, v = _sym_eigh(m)
    return w, v


def _symmetric_eigvals_bwd(v, g):
    return ((v * g) @ v.T,)


symmetric_eigvals.defvjp(_symmetric_eigvals_fwd, _symmetric_eigvals_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def residual_gram_eigvals(x: jax.Array, w: jax.Array, n: int) -> jax.Array:
    """The ``n`` largest eigenvalues of ``R.T @ R`` for the residual ``R = x - x @ w.T @ w``.

    These are the squared leading singular values of ``R``, computed from the ``(D, D)`` matrix
    ``P G P`` (``G = x.T @ x``, ``P = I - w.T @ w``) instead of an SVD of the ``(B, D)`` residual.

    The derivative of ``sum_i c_i * lambda_i`` needs only the ``n`` leading eigenvectors ``V``:
    with ``U = P V`` it is ``2 (x U) diag(c) U.T`` for ``x``, two products of ``B x D x n``
    instead of the ``B x D x D`` product a dense cotangent of ``G`` costs, and
    ``-2 [(w G U) diag(c) V.T + (w V) diag(c) (G U).T]`` for ``w``. Like
    :func:`symmetric_eigvals`, it is defined where eigenvalues repeat.

    Args:
      x: ``(B, D)``, usually centered latents.
      w: ``(K, D)``, the stacked bases (not necessarily orthonormal).
      n: number of eigenvalues, at most ``D`` (static).

    Returns:
      ``(n,)`` eigenvalues, descending.
    """
    return _residual_gram_eigvals_only(x, w, n)


def _residual_gram(x, w):
    """``(P G P, G)`` for ``G = x.T @ x`` and ``P = I - w.T @ w``."""
    g = batch_gram(x)
    gw = g @ w.T  # (D, K)
    gww = gw @ w  # G P_W, with P_W = w.T @ w
    # P G P expanded so that only (D, K) products appear besides G itself.
    return g - gww - gww.T + w.T @ ((w @ gw) @ w), g


def _residual_gram_eigvals_only(x, w, n):
    """:func:`residual_gram_eigvals` without its derivative rule: no eigenvectors computed."""
    return top_eigvalsh(_residual_gram(x, w)[0], n)


def _residual_gram_eigh(x, w, n):
    """The ``n`` leading eigenpairs of ``P G P`` (:mod:`space_jax._top_eigh`: on CPU from
    ``D = 128`` on without the whole decomposition), and ``G``."""
    m, g = _residual_gram(x, w)
    lam, v = top_eigh(m, n)
    return lam, v, g


def _residual_gram_eigvals_fwd(x, w, n):
    lam, v, g = _residual_gram_eigh(x, w, n)
    return lam, (x, w, g, v)


def _residual_gram_eigvals_bwd(n, residuals, c):
    x, w, g, v = residuals
    u, grad_w = _residual_gram_vjp_parts(w, g, v, c)
    return 2.0 * (x @ u) @ (u * c).T, grad_w


def _residual_gram_vjp_parts(w, g, v, c):
    """``U = P V`` (``(D, n)``) and the cotangent of ``w``, given the eigenvalues' cotangent ``c``.

    The cotangent of ``x`` is ``2 (x @ U) diag(c) U.T``; it is left to the caller, which may
    fold it into a larger product.
    """
    u = v - w.T @ (w @ v)
    gu = g @ u
    grad_w = -2.0 * ((w @ gu) @ (v * c).T + (w @ v) @ (gu * c).T)
    return u, grad_w


residual_gram_eigvals.defvjp(_residual_gram_eigvals_fwd, _residual_gram_eigvals_bwd)


# Decompositions and solves: every one the library runs goes through these names (batch-safe
# under vmap on CPU, differentiable; see space_jax._decompositions and space_jax._lapack).
