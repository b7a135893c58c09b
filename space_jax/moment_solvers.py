"""Subspaces, decoders and subspace sizes from merged :class:`~space_jax.Moments`.

:func:`solve_subspaces_from_moments` returns the :class:`~space_jax.Space` that
:func:`~space_jax.solve_subspaces` returns on the concatenated data, and
:func:`k_per_q_from_moments` / :func:`solve_dims_from_moments` size the subspaces from the
target moments as :func:`~space_jax.k_per_q` / :func:`~space_jax.solve_dims` do on the targets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ._checks import check_finite, check_positive_int, half_in_float32
from .dims import (
    _avg_pool_matrix,
    _thresholds,
    bins_for_modes,
    explained_rank_from_gram,
    normalised_gram,
)
from .linalg import Solver, full
from .moments import Moments, _check_moments, _require_samples
from .subspaces import Space, _basis, _leading_pair, _mask_rows, _normal_decoders, _resolve_k

__all__ = ["k_per_q_from_moments", "solve_dims_from_moments", "solve_subspaces_from_moments"]

logger = logging.getLogger(__name__)


# --- solving --------------------------------------------------------------------------------


@half_in_float32
def solve_subspaces_from_moments(
    m: Moments,
    k: int | Mapping[str, int] = 32,
    *,
    solver: Solver = "auto",
    active_k: jax.typing.ArrayLike | Mapping | None = None,
) -> Space:
    """Subspaces, decoders and target directions from merged moments.

    Equals :func:`~space_jax.solve_subspaces` on the concatenated data, by the same algebra:
    ``W_q`` and ``V_q`` come from the SVD of ``Zc.T @ Yc_q`` and the decoder is the
    minimum-norm solution of the normal equations ``(W_q Czz W_q.T) A_q = W_q Czy_q`` (a
    ``k x k`` pseudo-inverse), the least-squares decoder of ``Zc @ W_q.T @ A_q ~ Yc_q``.

    Args:
      m: :class:`Moments` of at least 2 samples.
      k: rows per basis, an int or ``{q: int}`` (static).
      solver: SVD solver for ``Zc.T @ Yc_q`` (static).
      active_k: optional traced number of active rows (an int array, or ``{q: int array}``),
        as :func:`~space_jax.solve_subspaces`: rows from ``active_k`` on are zero in ``W`` and
        ``A``, so a sweep over subspace sizes can ``vmap`` with a fixed ``k``.

    Returns:
      A :class:`~space_jax.Space`: ``W[q]`` ``(k_q, D)``, ``A[q]`` ``(k_q, m_q)``,
      ``V[q]`` ``(m_q,)``, in ``m``'s quantity order.
    """
    m = _check_moments(m, "m")
    _require_samples(m, 2, "centering")
    ks = _resolve_k(k, m.names)
    W, V = {}, {}
    for q in m.names:
        u, _, vh = full(m.zy[q], solver=solver)
        W[q] = jax.lax.stop_gradient(_basis(u, ks[q]))
        V[q] = jax.lax.stop_gradient(_leading_pair(u, vh)[1])
    W = _mask_rows(W, active_k)
    w_all = jnp.concatenate(list(W.values()), axis=0)
    A = _normal_decoders(W, w_all @ m.zz @ w_all.T, {q: W[q] @ m.zy[q] for q in W})
    A = {q: jax.lax.stop_gradient(a) for q, a in _mask_rows(A, active_k).items()}
    return Space(W, A, V)


# --- sizing ---------------------------------------------------------------------------------


_explained_rank_of_gram_jit = jax.jit(explained_rank_from_gram)


def _host_moments(m, name: str = "m") -> Moments:
    m = _check_moments(m, name)
    _require_samples(m, 2, "sizing")
    for q in m.names:
        check_finite(m.yy[q], f"{name}.yy[{q!r}]")
    return m


def _rank(g: jax.Array, t: float) -> int:
    g = normalised_gram(g)  # the rule of k_per_q on the data: scale-free, no overflow
    return int(_explained_rank_of_gram_jit(g, jnp.asarray(t, g.dtype)))


def k_per_q_from_moments(
    m: Moments,
    threshold: float | Mapping[str, float] = 0.90,
    *,
    default_threshold: float | None = None,
    per_quantity: bool = True,
) -> int | dict[str, int]:
    """:func:`~space_jax.k_per_q` from target moments instead of the targets.

    The spectrum of the centered targets is the eigenvalues of ``Yc_q.T @ Yc_q``, so the result
    equals ``k_per_q`` on the concatenated (pooled) targets.

    Args:
      m: :class:`Moments` of at least 2 samples.
      threshold, default_threshold, per_quantity: as :func:`~space_jax.k_per_q`.

    Returns:
      ``{q: int}`` or the largest ``k_q``.
    """
    m = _host_moments(m)
    names = dict.fromkeys(m.names)
    ts = _thresholds(names, threshold, default_threshold, 0.90, "threshold")
    ks = {q: _rank(m.yy[q], ts[q]) for q in m.names}
    logger.info("subspace sizes from moments: %s", ks)
    return ks if per_quantity else max(ks.values())


def solve_dims_from_moments(
    m: Moments,
    max_bins: int,
    bin_thresholds: float | Mapping[str, float],
    k_thresholds: float | Mapping[str, float],
    *,
    bin_default_threshold: float | None = None,
    k_default_threshold: float | None = None,
    pooling_mode: str = "avg",
    pool_per_quantity: bool = False,
    k_per_quantity: bool = False,
) -> dict[str, tuple[int, int]]:
    """:func:`~space_jax.solve_dims` from target moments instead of the targets.

    Average pooling is linear, ``pooled(Yc) = Yc @ P``, so the pooled targets' moments are
    ``P.T @ (Yc.T @ Yc) @ P`` and the result equals ``solve_dims`` on the concatenated targets.
    Max pooling is not linear and cannot be computed from moments.

    Args:
      m: :class:`Moments` of at least 2 samples whose targets are ``(S,)`` series or
        ``(C, H, W)`` fields per sample.
      max_bins, bin_thresholds, k_thresholds, bin_default_threshold, k_default_threshold,
        pool_per_quantity, k_per_quantity: as :func:`~space_jax.solve_dims`.
      pooling_mode: must be ``"avg"``.

    Returns:
      ``{q: (n_bins, k)}``.
    """
    if pooling_mode != "avg":
        raise ValueError(
            f"pooling_mode: only 'avg' pooling can be sized from moments (it is linear), got "
            f"{pooling_mode!r}; use solve_dims on the targets for max pooling"
        )
    max_bins = check_positive_int(max_bins, "max_bins")
    m = _host_moments(m)
    names = dict.fromkeys(m.names)
    bin_ts = _thresholds(names, bin_thresholds, bin_default_threshold, 0.95, "bin_thresholds")
    bins = {q: int(bins_for_modes(_rank(m.yy[q], bin_ts[q]), max_bins)) for q in m.names}
    if not pool_per_quantity:
        bins = dict.fromkeys(m.names, max(bins.values()))
    k_ts = _thresholds(names, k_thresholds, k_default_threshold, 0.90, "k_thresholds")
    ks = {}
    for q in m.names:
        p = _avg_pool_matrix(m.target_shapes[q], bins[q], m.yy[q].dtype, f"m (quantity {q!r})")
        ks[q] = _rank(p.T @ m.yy[q] @ p, k_ts[q])
    if not k_per_quantity:
        ks = dict.fromkeys(m.names, max(ks.values()))
    logger.info("dimensions from moments: %s", {q: (bins[q], ks[q]) for q in m.names})
    return {q: (bins[q], ks[q]) for q in m.names}
