"""Sizing: pooling resolution, subspace sizes and latent dimension from the targets' spectra.

The host-level functions (:func:`k_per_q`, :func:`optimal_bins`, :func:`solve_dims`,
:func:`minimal_latent_dim`) check their inputs eagerly (NaN/inf included) and return Python
ints. Their traced counterparts (:func:`explained_rank`, :func:`bins_for_modes`) return arrays,
so a sweep over thresholds can be jitted and vmapped.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ._checks import (
    HALF_DTYPES,
    as_float,
    check_finite,
    check_nonempty_target,
    check_positive_int,
    check_threshold,
)
from ._spmd import batch_first, batch_gram, batch_mean, batch_sum, replicated
from ._top_eigh import top_eigvalsh
from .pooling import _check_mode, pool

__all__ = [
    "align_latent_dim",
    "bins_for_modes",
    "explained_rank",
    "explained_rank_from_gram",
    "k_per_q",
    "minimal_latent_dim",
    "optimal_bins",
    "solve_dims",
]

logger = logging.getLogger(__name__)

_EPS = 1e-8


def _as_matrix(y: jax.Array) -> jax.Array:
    if y.ndim == 1:
        return y[:, None]
    return y.reshape(y.shape[0], -1)


def _unit_centered(y: jax.Array) -> jax.Array:
    """The target as ``(B, m)``, centered and divided by its largest deviation (half precision
    in float32): its Gram matrix can neither overflow nor underflow, and an absolute epsilon
    on it is relative to the data. Shifted by the first sample before centering, so that a
    constant column becomes exactly 0."""
    yc = _as_matrix(y)
    if jnp.dtype(yc.dtype) in HALF_DTYPES:
        yc = yc.astype(jnp.float32)
    yc = yc - batch_first(yc)
    yc = yc - batch_mean(yc, keepdims=True)
    peak = jnp.max(jnp.abs(yc))
    yc = yc / jnp.where(peak > 0, peak, 1.0)
    # Then to a largest column sum of squares of 1: the normalisation the moments' Gram
    # matrices get (:func:`normalised_gram`), so both routes apply the same rule.
    norm = jnp.sqrt(jnp.max(batch_sum(yc * yc)))
    return yc / jnp.where(norm > 0, norm, 1.0)


def normalised_gram(g: jax.Array) -> jax.Array:
    """A target's Gram matrix divided by its largest diagonal entry (half precision in
    float32), as :func:`explained_rank` normalises the target itself."""
    g = as_float(g, "g")
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"g: expected a square Gram matrix (m, m), got shape {g.shape}")
    if jnp.dtype(g.dtype) in HALF_DTYPES:
        g = g.astype(jnp.float32)
    top = jnp.max(jnp.diagonal(g))
    return g / jnp.where(top > 0, top, 1.0)


def explained_rank(y: jax.typing.ArrayLike, threshold: jax.typing.ArrayLike) -> jax.Array:
    """Number of leading principal components that explain a fraction of the variance.

    With ``s`` the singular values of the centered target, ``spec = s**2 / (sum(s**2) + 1e-8)``
    and the result is ``count(cumsum(spec) < threshold) + 1`` (spacelearn's rule), clamped to
    ``[1, m]`` for a target of ``m`` values per sample (spacelearn can return ``m + 1`` for a
    threshold of 1 or a constant target); a target without variance gets 1. The spectrum comes
    from the eigenvalues of the smaller Gram matrix (exact, no SVD), formed from the target
    divided by its largest deviation from the mean, so that it neither overflows nor underflows
    and the ``1e-8`` is relative: the rank does not depend on the target's units (spacelearn's
    absolute ``1e-8`` gives ``m + 1`` for any target of variance well below ``1e-8``). Half
    precision is computed in float32.

    Args:
      y: target ``(B,)``, ``(B, m)`` or ``(B, ...)`` (flattened).
      threshold: fraction of variance in ``(0, 1]``; may be traced (vmap over thresholds).

    Returns:
      An int32 scalar array.
    """
    y = as_float(y, "y")
    if y.ndim == 0:
        raise ValueError("y: expected a batch of targets, got a scalar")
    check_nonempty_target(y, "y")
    yc = _unit_centered(y)
    eps = _EPS  # relative to the largest deviation: the rank does not depend on units
    if yc.shape[0] >= yc.shape[1]:
        return _rank_from_gram(batch_gram(yc), threshold, eps)
    # (B, B) needs the whole batch on every device; on a mesh, gathering the B x m rows moves
    # fewer numbers than the all-reduce of an (m, m) matrix would, since B < m.
    yc = replicated(yc)
    return _rank_from_gram(yc @ yc.T, threshold, eps, yc.shape[1])


def explained_rank_from_gram(g: jax.typing.ArrayLike, threshold: jax.typing.ArrayLike) -> jax.Array:
    """:func:`explained_rank` from a Gram matrix of the centered target (``Yc.T @ Yc`` or
    ``Yc @ Yc.T``), whose eigenvalues are the squared singular values.

    Args:
      g: symmetric positive semi-definite ``(m, m)``.
      threshold: fraction of variance in ``(0, 1]``; may be traced.

    Returns:
      An int32 scalar array in ``[1, m]`` (1 when ``g`` is zero).
    """
    g = as_float(g, "g")
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"g: expected a square Gram matrix (m, m), got shape {g.shape}")
    if jnp.dtype(g.dtype) in HALF_DTYPES:
        g = g.astype(jnp.float32)
    return _rank_from_gram(g, threshold, _EPS)


def _rank_from_gram(g: jax.Array, threshold, eps, m: int | None = None) -> jax.Array:
    """The rank rule on a Gram matrix; ``m``, the most components there can be (the size of
    ``g`` when ``None``)."""
    # The whole spectrum, descending (on CPU from 256 columns on without LAPACK's ?syevd:
    # space_jax._top_eigh, 1.6-1.7 against 2.0-2.1 ms per 256 x 256 matrix).
    var = jnp.maximum(top_eigvalsh(g, g.shape[-1]), 0.0)
    total = jnp.sum(var)
    cumulative = jnp.cumsum(var / (total + eps))
    k = jnp.minimum(jnp.sum(cumulative < threshold) + 1, g.shape[-1] if m is None else m)
    return jnp.where(total > 0, k, 1).astype(jnp.int32)


def bins_for_modes(n_modes: jax.typing.ArrayLike, max_bins: int) -> jax.Array:
    """Grid side that holds ``n_modes`` modes: ``ceil(sqrt(n_modes))`` clamped to
    ``[2, max_bins]`` (traced counterpart of :func:`optimal_bins`' last step)."""
    side = jnp.ceil(jnp.sqrt(jnp.asarray(n_modes, jnp.float32))).astype(jnp.int32)
    return jnp.clip(side, 2, max(max_bins, 2))


_explained_rank_jit = jax.jit(explained_rank)


def _thresholds(Y: Mapping, threshold, default_threshold, fallback: float, name: str) -> dict:
    """Per-quantity thresholds: a float for all, or a dict with a fallback."""
    if default_threshold is not None:
        fallback = check_threshold(default_threshold, "default_threshold")
    if isinstance(threshold, Mapping):
        unknown = [q for q in threshold if q not in Y]
        if unknown:
            raise ValueError(
                f"{name}: thresholds for unknown quantities {unknown}; Y has {list(Y)}"
            )
        return {q: check_threshold(threshold.get(q, fallback), f"{name}[{q!r}]") for q in Y}
    t = check_threshold(threshold, name)
    return dict.fromkeys(Y, t)


def _host_targets(Y: Mapping, name: str = "Y") -> dict[str, jax.Array]:
    if not isinstance(Y, Mapping) or len(Y) == 0:
        raise ValueError(f"{name}: expected a non-empty dict of per-quantity targets")
    out = {}
    for q, y in Y.items():
        y = as_float(y, f"{name}[{q!r}]")
        if y.ndim == 0 or y.shape[0] < 2:
            raise ValueError(
                f"{name}[{q!r}]: expected a batch of at least 2 samples, got shape {y.shape}"
            )
        check_nonempty_target(y, f"{name}[{q!r}]")
        check_finite(y, f"{name}[{q!r}]")
        out[q] = y
    return out


def _rank(y: jax.Array, t: float) -> int:
    return int(_explained_rank_jit(y, jnp.asarray(t, y.dtype)))


def k_per_q(
    Y: Mapping,
    threshold: float | Mapping[str, float] = 0.90,
    *,
    default_threshold: float | None = None,
    per_quantity: bool = True,
) -> int | dict[str, int]:
    """Subspace size per quantity: components needed to explain ``threshold`` of the variance.

    Args:
      Y: ``{q: (B, ...)}`` pooled targets (1-D targets are ``(B, 1)``).
      threshold: a float in ``(0, 1]`` or ``{q: float}``.
      default_threshold: fallback for quantities missing from a dict ``threshold`` (else the
        float ``threshold``, else 0.90).
      per_quantity: return ``{q: k_q}``; otherwise the largest ``k_q``.

    Returns:
      ``{q: int}`` or an int.
    """
    Y = _host_targets(Y)
    ts = _thresholds(Y, threshold, default_threshold, 0.90, "threshold")
    ks = {q: _rank(y, ts[q]) for q, y in Y.items()}
    logger.info("subspace sizes: %s", ks)
    return ks if per_quantity else max(ks.values())


def optimal_bins(
    Y: Mapping,
    max_bins: int = 16,
    variance_threshold: float | Mapping[str, float] = 0.95,
    *,
    default_threshold: float | None = None,
    per_quantity: bool = False,
) -> int | dict[str, int]:
    """Pooling grid side per quantity from its spectrum (modes -> ``ceil(sqrt(modes))``).

    Args:
      Y: ``{q: (B, ...)}`` targets at a coarse resolution.
      max_bins: largest grid side considered.
      variance_threshold: a float in ``(0, 1]`` or ``{q: float}``.
      default_threshold: fallback for quantities missing from a dict (else the float, else 0.95).
      per_quantity: return ``{q: n_q}``; otherwise the largest ``n_q``.

    Returns:
      ``{q: int}`` or an int, each in ``[2, max_bins]``.
    """
    max_bins = check_positive_int(max_bins, "max_bins")
    Y = _host_targets(Y)
    ts = _thresholds(Y, variance_threshold, default_threshold, 0.95, "variance_threshold")
    out = {}
    for q, y in Y.items():
        modes = _rank(y, ts[q])
        out[q] = max(2, min(math.ceil(math.sqrt(modes)), max_bins))
        logger.info("[%s] %d modes (threshold %.2f) -> n_bins=%d", q, modes, ts[q], out[q])
    return out if per_quantity else max(out.values())


def solve_dims(
    Y: Mapping,
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
    """Pooling resolution and subspace size per quantity.

    :func:`optimal_bins` picks the grid, each target is pooled to it with :func:`pool`, and
    :func:`k_per_q` sizes the subspaces on the pooled targets.

    Args:
      Y: ``{q: (B, S)`` or ``(B, C, H, W)}`` targets; a 1-D target is read as ``(B, 1)``.
      max_bins, bin_thresholds, bin_default_threshold: as :func:`optimal_bins`.
      k_thresholds, k_default_threshold: as :func:`k_per_q`.
      pooling_mode: ``"avg"`` or ``"max"``.
      pool_per_quantity: one grid per quantity (else the largest for all).
      k_per_quantity: one size per quantity (else the largest for all).

    Returns:
      ``{q: (n_bins, k)}``.
    """
    _check_mode(pooling_mode)
    if pooling_mode == "avg":
        max_bins_checked = check_positive_int(max_bins, "max_bins")
        Yh = _host_targets(
            {q: _as_series(y) for q, y in Y.items()} if isinstance(Y, Mapping) else Y
        )
        bin_ts = _thresholds(Yh, bin_thresholds, bin_default_threshold, 0.95, "bin_thresholds")
        k_ts = _thresholds(Yh, k_thresholds, k_default_threshold, 0.90, "k_thresholds")
        fast = _solve_dims_from_grams(
            Yh, max_bins_checked, bin_ts, k_ts, pool_per_quantity, k_per_quantity
        )
        if fast is not None:
            return fast
    n = optimal_bins(
        Y,
        max_bins,
        bin_thresholds,
        default_threshold=bin_default_threshold,
        per_quantity=pool_per_quantity,
    )
    n_of = n if pool_per_quantity else dict.fromkeys(Y, n)
    pooled = {q: pool(_as_series(y), n_of[q], pooling_mode, name=f"Y[{q!r}]") for q, y in Y.items()}
    k = k_per_q(
        pooled, k_thresholds, default_threshold=k_default_threshold, per_quantity=k_per_quantity
    )
    k_of = k if k_per_quantity else dict.fromkeys(Y, k)
    return {q: (n_of[q], k_of[q]) for q in Y}


def _as_series(y):
    """A 1-D target ``(B,)`` as the series ``(B, 1)``; anything else unchanged."""
    y = jnp.asarray(y)
    return y[:, None] if y.ndim == 1 else y


def _avg_pool_matrix(shape: tuple[int, ...], n_bins: int, dtype, name: str) -> jax.Array:
    """``P`` with ``pool(y, n_bins, "avg").reshape(B, -1) == y.reshape(B, -1) @ P``; a scalar
    per sample (a 1-D target) is the series of length 1."""
    shape = shape or (1,)
    if len(shape) not in (1, 3):
        raise ValueError(
            f"{name}: per-sample target shape {shape} cannot be pooled; expected (S,) series or "
            "(C, H, W) fields (targets (B, S) or (B, C, H, W))"
        )
    size = math.prod(shape)
    basis = jnp.eye(size, dtype=dtype).reshape((size, *shape))
    return pool(basis, n_bins, "avg", name=name).reshape(size, -1)


@jax.jit
def _target_grams(ys: tuple) -> tuple:
    """``Yc.T @ Yc`` of every (flattened, centered) target: one compiled call for all."""
    out = []
    for y in ys:
        yc = _unit_centered(y)  # the ranks are scale-free: the same spectra as explained_rank
        out.append(batch_gram(yc))
    return tuple(out)


@jax.jit
def _gram_ranks(grams: tuple, thresholds: jax.Array) -> jax.Array:
    return jnp.stack(
        [explained_rank_from_gram(g, t) for g, t in zip(grams, list(thresholds), strict=True)]
    )


@functools.partial(jax.jit, static_argnames=("shapes", "bins"))
def _pooled_gram_ranks(grams: tuple, thresholds: jax.Array, shapes: tuple, bins: tuple):
    pooled = []
    for g, shape, n in zip(grams, shapes, bins, strict=True):
        p = _avg_pool_matrix(shape, n, g.dtype, "Y")
        pooled.append(p.T @ g @ p)
    return _gram_ranks(tuple(pooled), thresholds)


def _solve_dims_from_grams(Y, max_bins, bin_ts, k_ts, pool_per_quantity, k_per_quantity):
    """:func:`solve_dims` for average pooling from one Gram matrix per target.

    Average pooling is linear, ``pool(Yc) = Yc @ P``, so the pooled targets' spectrum is that of
    ``P.T (Yc.T Yc) P``: the Gram matrices that size the grid also size the subspaces, with no
    second pass over the data, and all quantities run in three compiled calls. None where a
    target is not a ``(B, S)`` series or ``(B, C, H, W)`` field with ``B >= S`` (the Gram
    would then be ``B x B``); the caller then pools the data.
    """
    names = list(Y)
    for y in Y.values():
        if y.ndim not in (2, 4) or y.shape[0] < math.prod(y.shape[1:]):
            return None
    ys = tuple(Y[q] for q in names)
    dtype = jnp.result_type(*ys, jnp.float32)
    grams = _target_grams(ys)
    ranks = _gram_ranks(grams, jnp.asarray([bin_ts[q] for q in names], dtype))
    bins = {}
    for q, modes in zip(names, (int(r) for r in ranks), strict=True):
        bins[q] = max(2, min(math.ceil(math.sqrt(modes)), max_bins))
        logger.info("[%s] %d modes (threshold %.2f) -> n_bins=%d", q, modes, bin_ts[q], bins[q])
    if not pool_per_quantity:
        bins = dict.fromkeys(names, max(bins.values()))
    shapes = tuple(tuple(Y[q].shape[1:]) for q in names)
    ranks = _pooled_gram_ranks(
        grams,
        jnp.asarray([k_ts[q] for q in names], dtype),
        shapes=shapes,
        bins=tuple(bins[q] for q in names),
    )
    ks = {q: int(r) for q, r in zip(names, ranks, strict=True)}
    logger.info("subspace sizes: %s", ks)
    if not k_per_quantity:
        ks = dict.fromkeys(names, max(ks.values()))
    return {q: (bins[q], ks[q]) for q in names}


def align_latent_dim(dim: int, num_heads: int) -> int:
    """Rounds ``dim`` up to a multiple of ``num_heads``."""
    dim = check_positive_int(dim, "dim")
    num_heads = check_positive_int(num_heads, "num_heads")
    return -(-dim // num_heads) * num_heads


def minimal_latent_dim(
    k: int | Mapping[str, int],
    *,
    Q: int | None = None,
    free_frac: float = 0.30,
    num_heads: int | None = None,
) -> int:
    """Smallest latent size holding all subspaces plus a free fraction.

    ``D = ceil(sum_k / (1 - free_frac))`` with ``sum_k = sum(k.values())`` or ``Q * k``, then
    rounded up to a multiple of ``num_heads``.

    Args:
      k: an int shared by ``Q`` quantities, or ``{q: k_q}``.
      Q: number of quantities (required when ``k`` is an int).
      free_frac: fraction of unconstrained dimensions, in ``[0, 1)``.
      num_heads: optional head count the result must divide into.

    Returns:
      An int.
    """
    if not 0.0 <= float(free_frac) < 1.0:
        raise ValueError(f"free_frac: expected a float in [0, 1), got {free_frac}")
    if isinstance(k, Mapping):
        if len(k) == 0:
            raise ValueError("k: expected at least one quantity, got an empty dict")
        physics = sum(check_positive_int(v, f"k[{q!r}]") for q, v in k.items())
    else:
        k = check_positive_int(k, "k")
        if Q is None:
            raise ValueError("Q: required when k is an int (the number of quantities)")
        physics = check_positive_int(Q, "Q") * k
    dim = math.ceil(physics / (1.0 - float(free_frac)))
    logger.info("latent sizing: free=%.0f%% -> D_min=%d", 100 * float(free_frac), dim)
    if num_heads is not None:
        dim = align_latent_dim(dim, num_heads)
    return dim
