"""The training objectives of a shared space, on standardised inputs of all models side by side.

The models' features are concatenated (``N = Σ n_m`` columns), ``P_cat`` ``(N, d)`` stacks the
projections by rows and ``R_cat`` ``(d, N)`` the reconstructions by columns; ``owner`` ``(N, M)``
one-hot says which model each feature belongs to. Most of the loss is then a few array
operations whatever the number of models. The terms are described in :mod:`space_jax.shared`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .._spmd import batch_first, batch_gram
from .checks import check_data, input_dims
from .config import DEFAULT_CONFIG, Params, ProjectionConfig

__all__ = ["projection_loss"]


def _standardisation(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-feature mean and one per-model scale (root mean variance), broadcast to ``(n,)``.

    Formed from ``x`` divided by its largest magnitude, so that data near either end of the
    float range (``1e±30`` in float32) neither overflows nor underflows. A constant feature's
    mean is its value exactly (its standardised input is then exactly 0), and a model whose
    features are all constant gets scale 1.
    """
    peak = jnp.max(jnp.abs(x))
    peak = jnp.where(peak > 0, peak, 1.0)
    u = x / peak
    first = batch_first(x)
    constant = jnp.all(x == first, axis=0)
    mean_u = jnp.where(constant, first / peak, jnp.mean(u, axis=0))
    rms_u = jnp.sqrt(jnp.mean(jnp.where(constant, 0.0, u - mean_u) ** 2))
    mean = jnp.where(constant, first, mean_u * peak)
    scale = jnp.where(rms_u > 0, rms_u * peak, 1.0)
    return mean, jnp.full_like(mean, scale)


def _owner(sizes: tuple[int, ...], dtype: Any) -> jax.Array:
    return jnp.asarray(np.repeat(np.eye(len(sizes)), sizes, axis=0), dtype)


def _blocks(P_cat: jax.Array, owner: jax.Array) -> jax.Array:
    """``(N, M, d)``: model ``a``'s projection in the rows of its features, zeros elsewhere."""
    return owner[:, :, None] * P_cat[:, None, :]


def _columns(sizes: tuple[int, ...]) -> list[slice]:
    """Each model's slice of the ``N`` side-by-side features."""
    edges = np.cumsum([0, *sizes])
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _latents(X: jax.Array, P_cat: jax.Array, sizes: tuple[int, ...]) -> jax.Array:
    """``(..., M, d)``: every model's latents ``x_m P_m`` from rows ``X`` ``(..., N)``."""
    return jnp.stack([X[..., c] @ P_cat[c] for c in _columns(sizes)], axis=-2)


def _split(P_cat: jax.Array, R_cat: jax.Array, sizes: tuple[int, ...]) -> tuple[list, list]:
    cuts = np.cumsum(sizes)[:-1]
    return jnp.split(P_cat, cuts, axis=0), jnp.split(R_cat, cuts, axis=1)


def _tiny(x: jax.Array) -> jax.Array:
    return jnp.asarray(jnp.finfo(x.dtype).tiny, x.dtype)


def _pair_weights(M: int, self_weight: ArrayLike) -> jax.Array:
    """``(M, M)`` weights of reconstructing target ``b`` from source ``a``'s latents: the cross
    pairs of a target share weight 1, its own latents get ``self_weight``."""
    eye = jnp.eye(M)
    return self_weight * eye + (1.0 - eye) / max(M - 1, 1)


def _invariant_loss(
    P_cat, R_cat, owner, config, *, cov, spread, energy, squared_error
) -> tuple[jax.Array, dict]:
    """The ``"invariant"`` loss from statistics of the latents (module doc).

    Args:
      cov: covariance of the consensus ``z̄`` ``(d, d)``.
      spread: ``E Σ_m |z_m - z̄|²``; energy: ``E Σ_m |z_m|²``.
      squared_error: ``(M, N)``, ``E (z_a R_i - x_i)²`` for source ``a`` and feature ``i``.
    """
    M, d = owner.shape[1], P_cat.shape[1]
    inv_size = owner @ (1.0 / owner.sum(axis=0))  # (N,) 1 / n of each feature's model
    weights = (_pair_weights(M, config.self_weight) @ owner.T) * inv_size / M  # (M, N)
    reconstruction = jnp.sum(weights * squared_error)
    alignment = spread / (energy + _tiny(energy))
    whitening = jnp.sum((cov - jnp.eye(d, dtype=cov.dtype)) ** 2) / d
    penalty = (jnp.sum(P_cat**2) / d + jnp.sum(R_cat**2 * inv_size)) / M
    loss = (
        reconstruction
        + config.alignment_weight * alignment
        + config.whitening_weight * whitening
        + config.ridge * penalty
    )
    terms = {
        "reconstruction": reconstruction,
        "alignment": alignment,
        "whitening": whitening,
        "penalty": penalty,
    }
    return loss, terms


def _invariant_terms(P_cat, R_cat, X, sizes, config) -> tuple[jax.Array, dict]:
    """The ``"invariant"`` loss on a batch ``X`` ``(B, N)``."""
    B = X.shape[0]
    owner = _owner(sizes, X.dtype)
    Z = _latents(X, P_cat, sizes)  # (B, M, d)
    zbar = jnp.mean(Z, axis=1)
    zc = zbar - jnp.mean(zbar, axis=0)
    predictions = jnp.einsum("nak,ki->nai", Z, R_cat)  # (B, M, N): z_a R_i
    return _invariant_loss(
        P_cat,
        R_cat,
        owner,
        config,
        cov=batch_gram(zc) / B,
        spread=jnp.sum((Z - zbar[:, None]) ** 2) / B,
        energy=jnp.sum(Z**2) / B,
        squared_error=jnp.mean((predictions - X[:, None, :]) ** 2, axis=0),
    )


def _invariant_terms_from_moments(P_cat, R_cat, moments, sizes, config) -> tuple:
    """:func:`_invariant_terms` of the whole data set from its moments ``(E x, E x xᵀ)``.

    Equal up to rounding; a full-batch epoch then costs about ``N² d`` multiply-adds instead of
    ``B N M d``, the data entering only through ``E[x xᵀ]``, computed once.
    """
    mean, second = moments
    M = len(sizes)
    owner = _owner(sizes, second.dtype)
    blocks = _blocks(P_cat, owner)
    SP = _latents(second, P_cat, sizes)  # E[x_i z_a]    (N, M, d)
    G = jnp.einsum("iak,ibl->akbl", blocks, SP)  # E[z_a z_bᵀ]    (M, d, M, d)
    mean_zbar = jnp.sum(_latents(mean, P_cat, sizes), axis=0) / M
    second_zbar = jnp.sum(G, axis=(0, 2)) / M**2
    energy = jnp.einsum("akak->", G)
    # E (z_a R_i - x_i)² = R_iᵀ E[z_a z_aᵀ] R_i - 2 R_iᵀ E[z_a x_i] + E x_i²  (products and sums:
    # an einsum keeping i would become N tiny batched matrix products)
    GR = jnp.einsum("akal,li->aki", G, R_cat)  # (M, d, N)
    squared_error = (
        jnp.sum(R_cat * GR, axis=1)
        - 2 * jnp.sum(R_cat.T[:, None, :] * SP, axis=2).T
        + jnp.diag(second)
    )
    return _invariant_loss(
        P_cat,
        R_cat,
        owner,
        config,
        cov=second_zbar - jnp.outer(mean_zbar, mean_zbar),
        spread=energy - M * jnp.trace(second_zbar),  # Σ_m |z_m - z̄|² = Σ_m |z_m|² - M |z̄|²
        energy=energy,
        squared_error=squared_error,
    )


def _go_parts(P_cat, R_cat, X, sizes) -> tuple:
    """The seed's per-model quantities on a batch: column slices, latents ``z_m``, their mean
    ``z̄`` and the reconstruction errors ``z_m R_m - x_m``."""
    cols = _columns(sizes)
    Z = [X[:, c] @ P_cat[c] for c in cols]
    zbar = sum(Z) / len(Z)
    errors = [z @ R_cat[:, c] - X[:, c] for z, c in zip(Z, cols, strict=True)]
    return cols, Z, zbar, errors


def _go_terms(P_cat, R_cat, X, sizes, config) -> tuple[jax.Array, dict]:
    """The seed's loss, summed over models, averaged over the batch."""
    _, Z, zbar, errors = _go_parts(P_cat, R_cat, X, sizes)
    B = X.shape[0]
    reconstruction = 0.5 * sum(jnp.sum(e**2) for e in errors) / B
    alignment = 0.5 * sum(jnp.sum((z - zbar) ** 2) for z in Z) / B
    loss = reconstruction + config.alignment_weight * alignment
    return loss, {"reconstruction": reconstruction, "alignment": alignment}


def projection_loss(
    params: Params, data: Mapping[str, ArrayLike], config: ProjectionConfig = DEFAULT_CONFIG
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training objective of ``config.objective`` at ``params`` (module doc for the terms).

    Args:
      params: as returned by :func:`init_projections` or :func:`train_projections`; inputs are
        standardised with their ``mean`` and ``scale``.
      data: model name -> aligned samples ``(B, n_m)``, at least two models.
      config: picks the objective and its weights.

    Returns:
      ``(loss, terms)``: the scalar loss and its unweighted terms by name.
    """
    config = config.resolved()
    xs = check_data(data, input_dims(params), config)
    return _loss({m: params[m] for m in xs}, xs, config)


@jax.jit
def _loss(params: Params, xs: dict, config: ProjectionConfig) -> tuple:
    names = tuple(xs)
    X = jnp.concatenate([(xs[m] - params[m]["mean"]) / params[m]["scale"] for m in names], 1)
    P_cat = jnp.concatenate([params[m]["projection"] for m in names], axis=0)
    R_cat = jnp.concatenate([params[m]["reconstruction"] for m in names], axis=1)
    terms = _go_terms if config.objective == "go" else _invariant_terms
    return terms(P_cat, R_cat, X, tuple(xs[m].shape[1] for m in names), config)
