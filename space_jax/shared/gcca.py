"""The closed-form start of training: generalised CCA (MAXVAR) of the aligned data."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import linalg
from .._spmd import batch_contract, batch_mean
from .config import ProjectionConfig
from .objectives import _columns, _latents, _pair_weights, _tiny

__all__ = ["gcca"]

# GCCA directions whose consensus variance falls below this fraction of the number of models
# (the largest possible) are not blown up to unit variance: the data cannot carry them.
_WEAK_DIRECTION = 1e-3
# Relative jitter added to covariances before inverting them (zero-variance features are common).
_JITTER = 1e-6
# A model whose mean variance is below this fraction of all features' mean variance is whitened
# as if it had the mean variance of all features (the data cannot carry its directions).
_WEAK_MODEL = 1e-6


def gcca(X: jax.Array, sizes: tuple[int, ...], d: int, config: ProjectionConfig) -> tuple:
    """Generalised CCA (MAXVAR) projections and the matching least-squares reconstructions.

    Each model's features are whitened, ``W_m = (C_mm + ridge I)^(-1/2)``; the top-``d``
    eigenvectors ``v`` of the whitened joint covariance ``K`` (eigenvalues ``λ`` in ``[0, M]``)
    give the consensus ``G = Σ_m x_m W_m v_m / sqrt(λ)`` with ``cov(G) = I``, and the ridge
    regression of ``G`` on model ``m`` is ``P_m = W_m v_m sqrt(λ)``. Columns are rescaled by
    ``M / λ`` so that the mean of the projections (the consensus the loss whitens) has unit
    variance; directions beyond the data's rank get zero columns. Each ``R_b`` then minimises the
    loss's reconstruction and ridge terms exactly, given those ``P``.

    Args:
      X: standardised inputs of all models side by side, ``(B, N)``.
      sizes: the models' input sizes, in the order of ``X``'s columns.
      d: latent size.
      config: ``ridge`` and ``self_weight`` are read.

    Returns:
      ``(P_cat (N, d), R_cat (d, N))``.
    """
    B, N = X.shape
    M = len(sizes)
    ridge = jnp.asarray(config.ridge, X.dtype)
    X = X - batch_mean(X)
    C = batch_contract(X, X) / B
    # The ridge is relative to a model's mean variance; a model without variance (constant
    # features) borrows the mean variance of all features instead, else its whitener (and so
    # its projection) would be ~1/sqrt(tiny) and training would overflow.
    overall = jnp.mean(jnp.diag(C))
    overall = jnp.where(overall > 0, overall, 1.0)
    whiteners = []
    for c in _columns(sizes):
        w, V = linalg.eigh(C[c, c])
        w = jnp.maximum(w, 0.0)
        variance = jnp.mean(w)
        variance = jnp.where(variance > _WEAK_MODEL * overall, variance, overall)
        shift = (ridge + _JITTER) * variance
        whiteners.append((V / jnp.sqrt(w + shift)) @ V.T)
    Wb = jax.scipy.linalg.block_diag(*whiteners)
    K = Wb @ C @ Wb
    lam, V = linalg.eigh((K + K.T) / 2)
    k = min(d, N)
    lam, V = jnp.maximum(lam[::-1][:k], 0.0), V[:, ::-1][:, :k]
    col_scale = M * jnp.sqrt(lam) / jnp.maximum(lam, _WEAK_DIRECTION * M)
    P_cat = jnp.pad((Wb @ V) * col_scale, ((0, 0), (0, d - k)))

    Z = _latents(X, P_cat, sizes)  # (B, M, d)
    pair = _pair_weights(M, config.self_weight)  # [source, target]
    # Every batch product at once: the (M d, M d) Gram matrix of all models' latents (only its
    # diagonal blocks are used) and their (M d, N) products with the inputs.
    Zf = Z.reshape(B, M * d)
    ZZ = jnp.einsum("sksl->skl", batch_contract(Zf, Zf).reshape(M, d, M, d)) / B  # (M, d, d)
    ZX = batch_contract(Zf, X).reshape(M, d, N) / B
    R_blocks = []
    for t, c in enumerate(_columns(sizes)):
        gram = jnp.einsum("s,skl->kl", pair[:, t], ZZ)
        gram = gram + (ridge + _JITTER * jnp.trace(gram) / d + _tiny(gram)) * jnp.eye(d)
        rhs = jnp.einsum("s,ski->ki", pair[:, t], ZX[:, :, c])
        R_blocks.append(linalg.solve(gram, rhs))
    return P_cat, jnp.concatenate(R_blocks, axis=1)
