"""The four SPACE losses and their weighted sum.

All losses are built on second-order statistics of the centered batch ``Zc`` (``B x D``):

* the subspace coordinates ``S = Zc @ W_all.T`` (``B x K``, ``K`` = all basis rows), which give
  the alignment residuals and, through ``S.T @ S``, every cross-correlation of the
  disentanglement loss;
* the Gram matrix ``G = Zc.T @ Zc`` (``D x D``), which gives the isotropy spectrum as the
  eigenvalues of the projected Gram matrix ``P G P`` (``P = I - W_all.T @ W_all``) instead of an
  SVD of the ``B x D`` residual. (Only when the stacked basis has orthonormal rows is ``P`` a
  projector, so that the eigenproblem could shrink to the ``D - K``-dimensional complement of
  the subspaces; building an orthonormal basis of that complement is a QR that costs what the
  smaller eigenproblem saves, 5.9 against 7.1 ms at ``D = 256, K = 64`` and 31 against 32 ms at
  ``D = 512, K = 128``, single-threaded, so the general ``D x D`` route is kept.)

So a call costs one ``B x D x D`` product (``G``; from ``D = 256`` on three half-width
products, 3/4 of the arithmetic: :func:`space_jax._spmd.batch_gram`), one ``B x D x K`` product
(``S``) and the ``n_dir`` leading eigenpairs of ``P G P`` forward (on CPU from ``D = 128``
without the whole decomposition: :mod:`space_jax._top_eigh`), and backward one
``B x D x n_dir`` product and one
``B x (K + n_dir) x D`` product: the isotropy gradient needs only the ``n_dir`` leading
eigenvectors (:func:`space_jax.linalg.residual_gram_eigvals`), and the custom derivative of the
batch statistics folds it, the coordinates' gradient and the centering into that one product.

The disentanglement and isotropy terms are scale-invariant, but ``G`` of latents near ``1e20``
overflows float32. The centered batch is therefore divided by a power of two near its spread
before any product (exact: it changes no rounding), and the reference's ``1e-8`` stabilisers
are divided by the same factor, so the terms equal the reference's at every scale.

Quantity order matters only for the disentanglement term, which normalises each pair by the
size of its first subspace. JAX passes dicts through ``jax.jit`` with sorted keys, so to make
eager and jitted calls agree the pairs follow the sorted quantity names unless ``order=`` names
another order (the torch bridge passes the dict's own order, as spacelearn iterates it).

Bases may be padded with zero rows (and decoders with matching zero rows): the losses are
unchanged, and normalisations by ``k`` count the non-zero rows, so a sweep can hold ``k_max``
rows and vary the active ``k`` under ``vmap``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._checks import (
    as_float,
    check_keys,
    check_latents,
    check_loss_weights,
    check_positive_int,
    flatten_target,
)
from ._host_malloc import ensure_host_malloc
from ._spmd import batch_contract, batch_max, batch_mean
from .linalg import (
    _residual_gram_eigh,
    _residual_gram_eigvals_only,
    _residual_gram_vjp_parts,
    gram,
)

__all__ = [
    "LossWeights",
    "alignment_loss",
    "combined_loss",
    "disentanglement_loss",
    "isotropy_loss",
    "stability_loss",
]

_EPS = 1e-8  # the reference's stabiliser in every normalisation


class LossWeights(NamedTuple):
    """Per-term weights of :func:`combined_loss` (a pytree: weights may be traced or vmapped)."""

    alignment: jax.typing.ArrayLike = 1.0
    disentanglement: jax.typing.ArrayLike = 1.0
    isotropy: jax.typing.ArrayLike = 1.0
    stability: jax.typing.ArrayLike = 1.0


def _bases(W: Mapping, latent_dim: int, name: str = "W") -> tuple[list[str], jax.Array, list]:
    """Checks the bases and stacks them by rows: ``(names, W_all (K, D), row counts)``."""
    if not isinstance(W, Mapping):
        raise TypeError(f"{name}: expected a dict of per-quantity bases, got {type(W)}")
    if len(W) == 0:
        raise ValueError(f"{name}: expected at least one quantity, got an empty dict")
    names = list(W)
    blocks = []
    for q in names:
        w = as_float(W[q], f"{name}[{q!r}]")
        if w.ndim != 2 or w.shape[1] != latent_dim:
            raise ValueError(
                f"{name}[{q!r}]: expected a basis of shape (k, D={latent_dim}), got {w.shape}"
            )
        if w.shape[0] < 1:
            raise ValueError(f"{name}[{q!r}]: expected at least one basis row, got {w.shape}")
        blocks.append(w)
    return names, jnp.concatenate(blocks, axis=0), [b.shape[0] for b in blocks]


def _ordered(W: Mapping, order: tuple[str, ...] | None) -> dict:
    """``W`` as a dict in the quantity order used for pairs: ``order``, else sorted names."""
    if not isinstance(W, Mapping):
        raise TypeError(f"W: expected a dict of per-quantity bases, got {type(W)}")
    if order is None:
        return {q: W[q] for q in sorted(W)}
    if sorted(order) != sorted(W):
        raise ValueError(f"order: expected a permutation of W's quantities {list(W)}, got {order}")
    return {q: W[q] for q in order}


def _center(x: jax.Array) -> jax.Array:
    return x - batch_mean(x, keepdims=True)


def _scale_of(z: jax.Array) -> jax.Array:
    """A power of two above ``2 max |z|`` (1 if that is 0 or not finite): dividing by it is
    exact, and leaves every centered entry below 1 in magnitude.

    ``max |z|`` rather than the centered spread: one reduction instead of two (a column
    minimum and maximum), and safe, since a spread below ``eps * max |z|`` cannot be represented
    in ``z`` anyway (so the scaled entries never underflow when squared).
    """
    spread = 2.0 * jnp.max(batch_max(jnp.abs(z)))
    _, exponent = jnp.frexp(spread)
    scale = jnp.ldexp(jnp.ones((), z.dtype), exponent)
    ok = jnp.isfinite(spread) & (spread > 0)
    return jax.lax.stop_gradient(jnp.where(ok, scale, jnp.ones((), z.dtype)))


def _scaled_center(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``((Z - mean) / scale, scale)`` with :func:`_scale_of`: its Gram matrices cannot
    overflow (entries at most ``B``)."""
    ensure_host_malloc()  # every loss and solve passes here while tracing
    scale = _scale_of(z)
    return (z - batch_mean(z, keepdims=True)) * (1.0 / scale), scale


def _safe_sqrt(x: jax.Array, floor) -> jax.Array:
    """``sqrt(x)`` with 0 (and a zero derivative) where ``x <= floor``."""
    positive = x > floor
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _active_rows(w: jax.Array) -> jax.Array:
    """Number of non-zero rows of a (possibly zero-padded) basis, at least 1."""
    return jnp.maximum(jnp.sum(jnp.any(w != 0, axis=1)), 1)


def _split(x: jax.Array, sizes: list, axis: int) -> list[jax.Array]:
    offsets = [sum(sizes[:i]) for i in range(1, len(sizes))]
    return jnp.split(x, offsets, axis=axis)


# --- terms from statistics -------------------------------------------------------------------


def _alignment_term(coords: jax.Array, sizes, names, A: Mapping, Y: Mapping) -> jax.Array:
    batch = coords.shape[0]
    total = 0.0
    for q, s_q in zip(names, _split(coords, sizes, axis=1), strict=True):
        y = _center(flatten_target(Y[q], batch, q))
        a = as_float(A[q], f"A[{q!r}]")
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2 or a.shape != (s_q.shape[1], y.shape[1]):
            raise ValueError(
                f"A[{q!r}]: expected a decoder of shape (k={s_q.shape[1]}, m={y.shape[1]}), "
                f"got {a.shape}"
            )
        total = total + jnp.mean((s_q @ a - y) ** 2)
    return total / len(names)


def _disentanglement_term(cov: jax.Array, batch: int, sizes, bases, scale=1.0) -> jax.Array:
    """From the coordinates' Gram matrix ``cov`` of latents divided by ``scale``."""
    n = len(sizes)
    if n < 2:
        return jnp.zeros((), cov.dtype)
    std = _safe_sqrt(jnp.diagonal(cov) / (batch - 1), 0.0)
    inv = 1.0 / (std + _EPS / scale)
    corr = cov * inv[:, None] * inv[None, :] / batch
    blocks = [_split(row, sizes, axis=1) for row in _split(corr, sizes, axis=0)]
    total = 0.0
    for i in range(n):
        k_i = _active_rows(bases[i])
        for j in range(i + 1, n):
            total = total + jnp.sum(blocks[i][j] ** 2) / k_i
    return total / (n * (n - 1) // 2)


def _isotropy_term(lam: jax.Array, d: int, scale=1.0) -> jax.Array:
    """The isotropy loss from the leading eigenvalues ``lam`` of the residual's Gram matrix,
    of latents divided by ``scale``."""
    # Eigenvalues under this floor are rounding noise of the projected-out directions; an
    # SVD of the residual reports them as (near) zero, and so do we.
    floor = jax.lax.stop_gradient(lam[0]) * jnp.finfo(lam.dtype).eps * d
    s = _safe_sqrt(lam, floor)
    s = s / (jnp.mean(s) + _EPS / scale)
    return jnp.mean((s - 1.0) ** 2)


def _n_eigvals(n_dir: int, shape) -> int:
    return min(n_dir, *shape)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _batch_statistics(
    z: jax.Array, w_all: jax.Array, n: int, with_coords: bool = True
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(Zs @ W_all.T, lam, scale)`` for ``Zs = (Z - mean) / scale`` (:func:`_scaled_center`):
    the scaled subspace coordinates (``(B, 0)`` without ``with_coords``), the ``n`` leading
    eigenvalues of the scaled residual's Gram matrix (as
    :func:`space_jax.linalg.residual_gram_eigvals`) and the scale (a constant: its cotangent
    is ignored).

    Its derivative folds both cotangents, the centering and the scale into ONE
    ``B x (K + n) x D`` product, ``(L - mean(L)) @ [W_all; U.T] / scale`` with
    ``L = [dS, 2 (Zs U) diag(c)]``, where the automatic derivative takes two ``B x D`` products,
    their sum and a ``B x D`` centering pass.
    """
    # Undifferentiated: the eigenvalues alone (no eigenvectors, which only the derivative uses).
    zs, scale = _scaled_center(z)
    lam = _residual_gram_eigvals_only(zs, w_all, n)
    coords = zs @ w_all.T if with_coords else zs[:, :0]
    return coords, lam, scale


def _batch_statistics_fwd(z, w_all, n, with_coords):
    zs, scale = _scaled_center(z)
    lam, v, g = _residual_gram_eigh(zs, w_all, n)
    coords = zs @ w_all.T if with_coords else zs[:, :0]
    return (coords, lam, scale), (zs, w_all, g, v, scale)


def _batch_statistics_bwd(n, with_coords, residuals, cotangents):
    zs, w_all, g, v, scale = residuals
    d_coords, c, _ = cotangents
    u, grad_w = _residual_gram_vjp_parts(w_all, g, v, c)
    zu = 2.0 * (zs @ u) * c  # (B, n)
    left = jnp.concatenate([d_coords, zu], axis=1) if with_coords else zu  # (B, K + n)
    right = jnp.concatenate([w_all, u.T], axis=0) if with_coords else u.T
    # The centering's derivative subtracts the batch mean; on the narrow factor it is cheap.
    left = left - batch_mean(left, keepdims=True)
    grad_z = left @ (right * (1.0 / scale))  # the scale on the narrow factor: no extra pass
    if with_coords:
        grad_w = grad_w + batch_contract(d_coords, zs)
    return grad_z, grad_w


_batch_statistics.defvjp(_batch_statistics_fwd, _batch_statistics_bwd)


def _stability_term(W: Mapping, W_prev: Mapping | None, dtype) -> jax.Array:
    if W_prev is None:
        return jnp.zeros((), dtype)
    check_keys("W", W, "W_prev", W_prev)
    total = 0.0
    for q in W:
        w, w_prev = as_float(W[q], f"W[{q!r}]"), as_float(W_prev[q], f"W_prev[{q!r}]")
        if w.shape != w_prev.shape:
            raise ValueError(
                f"W_prev[{q!r}]: expected shape {w.shape} to match W[{q!r}], got {w_prev.shape}"
            )
        total = total + jnp.sum((w - w_prev) ** 2)
    return total / len(W)


# --- public losses -----------------------------------------------------------------------


def alignment_loss(Z: jax.typing.ArrayLike, W: Mapping, A: Mapping, Y: Mapping) -> jax.Array:
    """How well each subspace decodes its target.

    ``mean_q mean((Zc @ W_q.T @ A_q - Yc_q) ** 2)``.

    Args:
      Z: latents ``(B, D)``.
      W: ``{q: (k_q, D)}`` bases.
      A: ``{q: (k_q, m_q)}`` decoders.
      Y: ``{q: (B, ...)}`` targets, flattened to ``(B, m_q)`` (1-D targets are ``(B, 1)``).

    Returns:
      A scalar; 0 for perfect decoding.
    """
    Z = check_latents(Z)
    names, w_all, sizes = _bases(W, Z.shape[1])
    check_keys("W", W, "A", A)
    check_keys("W", W, "Y", Y)
    return _alignment_term(_center(Z) @ w_all.T, sizes, names, A, Y)


def disentanglement_loss(
    Z: jax.typing.ArrayLike, W: Mapping, *, order: tuple[str, ...] | None = None
) -> jax.Array:
    """Cross-correlation between the coordinates of different subspaces.

    For each pair ``i < j``: the correlation matrix ``Corr`` (``k_i x k_j``) of the standardised
    coordinates ``Zc @ W_i.T`` and ``Zc @ W_j.T``; the term is ``sum(Corr ** 2) / k_i`` with
    ``k_i`` the non-zero rows of ``W_i``. Averaged over pairs; 0 with fewer than two quantities.

    Args:
      Z: latents ``(B, D)``.
      W: ``{q: (k_q, D)}`` bases.
      order: the quantity order of the pairs (static); default sorted names.

    Returns:
      A scalar in ``[0, 1]``: 0 when decorrelated, 1 for identical subspaces.
    """
    Z = check_latents(Z)
    names, w_all, sizes = _bases(_ordered(W, order), Z.shape[1])
    zs, scale = _scaled_center(Z)
    coords = zs @ w_all.T
    bases = [W[q] for q in names]
    return _disentanglement_term(gram(coords), Z.shape[0], sizes, bases, scale)


def isotropy_loss(Z: jax.typing.ArrayLike, W: Mapping, n_dir: int = 32) -> jax.Array:
    """Evenness of the leading singular values of the residual outside all subspaces.

    ``R = Zc - Zc @ W_all.T @ W_all``; ``s`` = its first ``n_dir`` singular values (from the
    eigenvalues of ``R.T @ R``, exact); ``mean((s / (mean(s) + 1e-8) - 1) ** 2)``.

    Args:
      Z: latents ``(B, D)``.
      W: ``{q: (k_q, D)}`` bases (stacked by rows as in the reference, which assumes the
        subspaces are mutually orthogonal).
      n_dir: number of leading singular values compared (static).

    Returns:
      A scalar; 0 for a flat spectrum.
    """
    Z = check_latents(Z)
    n_dir = check_positive_int(n_dir, "n_dir")
    _, w_all, _ = _bases(W, Z.shape[1])
    _, lam, scale = _batch_statistics(Z, w_all, _n_eigvals(n_dir, Z.shape), False)
    return _isotropy_term(lam, Z.shape[1], scale)


def stability_loss(W: Mapping, W_prev: Mapping | None) -> jax.Array:
    """Drift of the bases since the previous refresh.

    ``mean_q ||W_q - W_prev_q||_F ** 2``, or 0 when ``W_prev`` is None.

    Args:
      W: ``{q: (k_q, D)}`` current bases.
      W_prev: ``{q: (k_q, D)}`` previous bases, or None.

    Returns:
      A scalar.
    """
    if not isinstance(W, Mapping) or len(W) == 0:
        raise ValueError("W: expected a non-empty dict of per-quantity bases")
    dtype = as_float(next(iter(W.values())), "W").dtype
    return _stability_term(W, W_prev, dtype)


def combined_loss(
    Z: jax.typing.ArrayLike,
    W: Mapping,
    A: Mapping,
    Y: Mapping,
    W_prev: Mapping | None = None,
    *,
    n_dir: int = 32,
    weights: LossWeights | tuple | None = None,
    order: tuple[str, ...] | None = None,
) -> jax.Array:
    """The SPACE objective: weighted sum of the four losses, from one pass over the batch.

    Args:
      Z: latents ``(B, D)``.
      W: ``{q: (k_q, D)}`` bases.
      A: ``{q: (k_q, m_q)}`` decoders.
      Y: ``{q: (B, ...)}`` targets.
      W_prev: previous bases or None (no stability term).
      n_dir: leading singular values used by the isotropy term (static).
      weights: :class:`LossWeights`, a sequence of exactly 4 or a dict by term name (missing
        terms 1) for alignment, disentanglement, isotropy and stability; default 1 each, which
        equals spacelearn's ``combined_loss``. Any other length raises ``ValueError``.
      order: quantity order of the disentanglement pairs (static); default sorted names.

    Returns:
      A scalar.
    """
    Z = check_latents(Z)
    n_dir = check_positive_int(n_dir, "n_dir")
    W = _ordered(W, order)
    names, w_all, sizes = _bases(W, Z.shape[1])
    check_keys("W", W, "A", A)
    check_keys("W", W, "Y", Y)
    weights = LossWeights(*check_loss_weights(weights))
    coords, lam, scale = _batch_statistics(Z, w_all, _n_eigvals(n_dir, Z.shape), True)
    bases = [W[q] for q in names]
    terms = (
        _alignment_term(coords * scale, sizes, names, A, Y),
        _disentanglement_term(gram(coords), Z.shape[0], sizes, bases, scale),
        _isotropy_term(lam, Z.shape[1], scale),
        _stability_term(W, W_prev, Z.dtype),
    )
    return sum(w * t for w, t in zip(weights, terms, strict=True))
