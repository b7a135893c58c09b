"""The SPACE objective over a streamed data set, from merged moments.

Every term of :func:`~space_jax.combined_loss` is a function of second-order statistics, so the
objective of a data set too large for one batch follows from its :class:`~space_jax.Moments`
(``count``, ``Czz = Zc.T @ Zc``, ``Czy_q = Zc.T @ Yc_q``, ``Cyy_q = Yc_q.T @ Yc_q``):

* alignment: ``sum((S_q A_q - Yc_q) ** 2) = tr(A_q.T (W_q Czz W_q.T) A_q)
  - 2 tr(A_q.T W_q Czy_q) + tr(Cyy_q)``, divided by ``count * m_q``;
* disentanglement: the coordinates' Gram matrix is ``W_all Czz W_all.T``;
* isotropy: the eigenvalues of ``P Czz P``, ``P = I - W_all.T W_all``;
* stability: from the bases alone.

The result equals :func:`~space_jax.combined_loss` on the concatenated data up to rounding. The
alignment term is a difference of sums here (the residuals are never formed), so in float32 it
carries an absolute error of about ``eps * tr(Cyy_q) / (count * m_q)``: relative to the loss,
``eps`` divided by the fraction of the targets' variance left unexplained. It is differentiable
with respect to ``W``, ``A`` and ``W_prev`` (the moments are data).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ._checks import as_float, check_keys, check_loss_weights, check_positive_int
from .linalg import symmetric_eigvals
from .losses import (
    LossWeights,
    _bases,
    _disentanglement_term,
    _isotropy_term,
    _ordered,
    _split,
    _stability_term,
)
from .moments import Moments, _check_moments, _require_samples

__all__ = ["combined_loss_from_moments"]


def _alignment_from_moments(m: Moments, w_all, sizes, names, A: Mapping) -> jax.Array:
    total = 0.0
    normal_all = w_all @ m.zz @ w_all.T
    blocks = _split(w_all, sizes, axis=0)
    start = 0
    for q, w, k in zip(names, blocks, sizes, strict=True):
        size = m.zy[q].shape[1]
        a = as_float(A[q], f"A[{q!r}]")
        if a.ndim == 1:
            a = a[:, None]
        if a.shape != (k, size):
            raise ValueError(
                f"A[{q!r}]: expected a decoder of shape (k={k}, m={size}), got {a.shape}"
            )
        normal = normal_all[start : start + k, start : start + k]
        fitted = jnp.sum(a * (normal @ a))
        cross = jnp.sum(a * (w @ m.zy[q]))
        sse = jnp.maximum(fitted - 2.0 * cross + jnp.trace(m.yy[q]), 0.0)
        total = total + sse / (m.count * size)
        start += k
    return total / len(names)


def _residual_eigvals(zz: jax.Array, w: jax.Array, n: int) -> jax.Array:
    gw = zz @ w.T
    gww = gw @ w
    projected = zz - gww - gww.T + w.T @ ((w @ gw) @ w)
    return symmetric_eigvals(projected)[:n]


def combined_loss_from_moments(
    m: Moments,
    W: Mapping,
    A: Mapping,
    W_prev: Mapping | None = None,
    *,
    n_dir: int = 32,
    weights: LossWeights | tuple | Mapping | None = None,
    order: tuple[str, ...] | None = None,
) -> jax.Array:
    """:func:`~space_jax.combined_loss` of the data summarised by ``m``.

    Args:
      m: :class:`~space_jax.Moments` of at least 2 samples (for example from
        :func:`~space_jax.stream_moments`), with the quantities of ``W``.
      W: ``{q: (k_q, D)}`` bases.
      A: ``{q: (k_q, m_q)}`` decoders.
      W_prev: previous bases or None (no stability term).
      n_dir: leading singular values used by the isotropy term (static); as in
        ``combined_loss``, at most ``min(count, D)`` are used (the count must then be concrete
        when it is smaller than ``min(n_dir, D)``).
      weights: as :func:`~space_jax.combined_loss` (default 1 each).
      order: quantity order of the disentanglement pairs (static); default sorted names.

    Returns:
      A scalar: the objective on the concatenated data, up to rounding.
    """
    m = _check_moments(m, "m")
    _require_samples(m, 2, "the objective")
    n_dir = check_positive_int(n_dir, "n_dir")
    W = _ordered(W, order)
    check_keys("W", W, "m", dict.fromkeys(m.names))
    check_keys("W", W, "A", A)
    d = m.latent_dim
    names, w_all, sizes = _bases(W, d)
    n = min(n_dir, d)
    if not isinstance(m.count, jax.core.Tracer):
        n = min(n, int(m.count))
    weights = LossWeights(*check_loss_weights(weights))
    dtype = m.zz.dtype
    terms = (
        _alignment_from_moments(m, w_all, sizes, names, A),
        _disentanglement_term(w_all @ m.zz @ w_all.T, m.count, sizes, [W[q] for q in names]),
        _isotropy_term(_residual_eigvals(m.zz, w_all, n), d),
        _stability_term(W, W_prev, dtype),
    )
    return sum(w * t for w, t in zip(weights, terms, strict=True))
