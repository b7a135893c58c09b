"""A shared latent space that several models project into and read back from.

The Go seed's cross-model space (``seeds/004``) in functional form. Each registered model ``m``
with ``n_m`` features owns four arrays, a pytree ``params[m]``:

* ``projection`` ``P_m`` ``(n_m, d)`` and ``reconstruction`` ``R_m`` ``(d, n_m)``, as the seed;
* ``mean`` and ``scale`` ``(n_m,)``, the input standardisation (zeros and ones for the seed's
  objective), so that ``project(m, x) = ((x - mean) / scale) @ P_m`` and
  ``retrieve(m, z) = (z @ R_m) * scale + mean``.

Two objectives, on the standardised inputs ``x_m`` of aligned samples (``z_m = x_m @ P_m``,
``z̄`` the mean of the ``z_m`` over the ``M`` models):

* ``"go"``, the seed's: per model ``½||z_m R_m - x_m||² + alignment_weight · ½||z_m - z̄||²``
  with ``z̄`` held constant, stepped as the seed steps it (``R`` first, then ``P`` through the
  updated ``R``). It can cheat: scaling every ``P`` by ``c`` and every ``R`` by ``1/c`` leaves
  the reconstruction alone and scales the alignment term by ``c²``.
* ``"invariant"`` (the default), which cannot:

  - reconstruction, what ``translate`` needs: the mean over target models ``b`` of
    ``mean_{a≠b} mse(z_a R_b, x_b) + self_weight · mse(z_b R_b, x_b)``. Cross pairs dominate
    because a shared ``R_b`` cannot be optimal for both: the best read-out of ``x_b`` from
    another model's latents is shrunk by their correlation, the best self read-out is not;
  - alignment, scale-free: ``Σ_m ||z_m - z̄||² / Σ_m ||z_m||²``, in ``[0, 1]``;
  - whitening, ``||cov(z̄) - I||_F² / d``: fixes the scale of the space and keeps every latent
    direction alive (so shrinking ``P`` costs, and no direction collapses);
  - ``ridge · mean_m(||P_m||² / d + ||R_m||² / n_m)``.

  Inputs are centered per feature and scaled per model to unit mean variance, so models of
  different scales weigh alike while each keeps its features' relative weights. Training
  starts from the closed-form generalised CCA (MAXVAR) of the aligned data, each ``R_b`` being
  the exact minimiser of the reconstruction and ridge terms given those ``P``. (With two models
  and ``self_weight=0`` the reconstruction is a reduced-rank regression each way, unchanged by
  any invertible map of the latent space: alignment and whitening then only pick coordinates.)

Training is one jitted call: ``lax.scan`` over epochs, over mini-batches inside an epoch, optax
for the update direction. A full-batch epoch needs only the inputs' first and second moments,
computed once, so it costs ``O(N² d)`` (``N`` = all features) whatever the number of samples.
The float fields of :class:`ProjectionConfig` are pytree leaves, so ``train_projections`` vmaps
over learning rates, weights and keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from . import linalg
from ._checks import check_finite, check_positive_int

__all__ = [
    "Params",
    "ProjectionConfig",
    "SharedSpace",
    "init_projections",
    "projection_loss",
    "train_projections",
]

logger = logging.getLogger(__name__)

Params = dict[str, dict[str, jax.Array]]
"""Per model: ``projection`` ``(n, d)``, ``reconstruction`` ``(d, n)``, ``mean`` and ``scale``
``(n,)``."""

_OBJECTIVES = ("invariant", "go")
_OPTIMIZERS = ("adam", "sgd")
_INITS = ("gcca", "xavier")
_FIELDS = ("projection", "reconstruction", "mean", "scale")
# GCCA directions whose consensus variance falls below this fraction of the number of models
# (the largest possible) are not blown up to unit variance: the data cannot carry them.
_WEAK_DIRECTION = 1e-3
# Relative jitter added to covariances before inverting them (zero-variance features are common).
_JITTER = 1e-6
_FORMAT = "space_jax.SharedSpace"
_FORMAT_VERSION = 1


def _static(default: Any) -> Any:
    return dataclasses.field(default=default, metadata={"static": True})


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ProjectionConfig:
    """How :func:`train_projections` trains (the seed's fields and defaults, plus options).

    Float fields are pytree leaves: give them as arrays under ``jax.vmap`` to sweep them. The
    other fields are static. Fields left at ``None`` follow the objective: the seed's choices
    for ``objective="go"`` (per-sample SGD in index order, learning rate times 0.999 each epoch,
    Xavier start), and Adam on the full batch from the GCCA solution for ``"invariant"``.

    Attributes:
      latent_dim: latent size for training; 0 means the space's own ``dim``. A different value
        re-initialises :class:`SharedSpace` at that size (the functional API refuses it).
      learning_rate: step size.
      n_epochs: passes over the data.
      alignment_weight: weight of the alignment term.
      whitening_weight: weight of ``||cov(z̄) - I||² / d`` (``"invariant"`` only).
      self_weight: weight of a model's own reconstruction next to the cross-model ones (which
        share weight 1; ``"invariant"`` only).
      ridge: Tikhonov weight of the GCCA start and of the weight penalty (``"invariant"``).
      lr_decay: learning-rate factor per epoch (``None``: 0.999 for ``"go"``, else 1).
      objective: ``"invariant"`` (default) or ``"go"`` (the seed's).
      optimizer: ``"adam"`` or ``"sgd"`` (``None``: ``"sgd"`` for ``"go"``, else ``"adam"``).
      batch_size: samples per step (``None``: 1 for ``"go"``, else the full batch). A last
        partial batch is filled with the epoch's first samples.
      init: ``"gcca"`` (closed form) or ``"xavier"`` (start from the given matrices).
      shuffle: reshuffle every epoch (``None``: off for ``"go"``, else on).
      seed: seed of the shuffling key when :func:`train_projections` gets no ``key``.
    """

    latent_dim: int = _static(0)
    learning_rate: ArrayLike = 0.01
    n_epochs: int = _static(100)
    alignment_weight: ArrayLike = 1.0
    whitening_weight: ArrayLike = 1.0
    self_weight: ArrayLike = 0.1
    ridge: ArrayLike = 1e-2
    lr_decay: ArrayLike | None = None
    objective: str = _static("invariant")
    optimizer: str | None = _static(None)
    batch_size: int | None = _static(None)
    init: str | None = _static(None)
    shuffle: bool | None = _static(None)
    seed: int = _static(0)

    def __post_init__(self) -> None:
        for field, choices in (
            ("objective", _OBJECTIVES),
            ("optimizer", (None, *_OPTIMIZERS)),
            ("init", (None, *_INITS)),
            ("shuffle", (None, True, False)),
        ):
            if getattr(self, field) not in choices:
                raise ValueError(
                    f"ProjectionConfig.{field}: expected one of {choices}, "
                    f"got {getattr(self, field)!r}"
                )
        check_positive_int(self.n_epochs, "ProjectionConfig.n_epochs")
        check_positive_int(self.latent_dim, "ProjectionConfig.latent_dim", minimum=0)
        check_positive_int(self.seed, "ProjectionConfig.seed", minimum=0)
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "ProjectionConfig.batch_size")

    def replace(self, **changes: Any) -> ProjectionConfig:
        """A copy with ``changes`` (``config.replace(learning_rate=lr)`` under ``vmap``)."""
        return dataclasses.replace(self, **changes)

    def resolved(self) -> ProjectionConfig:
        """This config with every ``None`` replaced by its objective's choice."""
        go = self.objective == "go"
        return self.replace(
            lr_decay=(0.999 if go else 1.0) if self.lr_decay is None else self.lr_decay,
            optimizer=self.optimizer or ("sgd" if go else "adam"),
            batch_size=self.batch_size if self.batch_size is not None or not go else 1,
            init=self.init or ("xavier" if go else "gcca"),
            shuffle=(not go) if self.shuffle is None else self.shuffle,
        )


_DEFAULT_CONFIG = ProjectionConfig()

# --------------------------------------------------------------------------------------------
# Initialisation


def init_projections(
    key: jax.Array, dims: Mapping[str, int], latent_dim: int, *, dtype: Any = None
) -> Params:
    """Xavier-uniform projection and reconstruction matrices, as the seed's ``Register``.

    Args:
      key: a PRNG key; model ``i`` of ``dims`` uses ``jax.random.split(key, len(dims))[i]``.
        Vmap over keys for an ensemble.
      dims: model name -> input size ``n``.
      latent_dim: size ``d`` of the shared space.
      dtype: float dtype of the matrices (JAX's default float when ``None``).

    Returns:
      ``{name: {"projection": (n, d), "reconstruction": (d, n), "mean": zeros (n,),
      "scale": ones (n,)}}``, every matrix drawn from ``U(-l, l)``, ``l = sqrt(6 / (n + d))``.
    """
    d = check_positive_int(latent_dim, "latent_dim")
    sizes = {name: _check_input_dim(name, n) for name, n in dims.items()}
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.zeros(()).dtype
    keys = jax.random.split(key, len(sizes))
    return {name: _xavier(k, n, d, dtype) for (name, n), k in zip(sizes.items(), keys, strict=True)}


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _xavier(key: jax.Array, n: int, d: int, dtype: Any) -> dict[str, jax.Array]:
    # One draw for both matrices: compiling the sampler dominates the cost of registering.
    limit = math.sqrt(6.0 / (n + d))
    w = jax.random.uniform(key, (2, n * d), dtype, -limit, limit)
    return {
        "projection": w[0].reshape(n, d),
        "reconstruction": w[1].reshape(d, n),
        "mean": jnp.zeros((n,), dtype),
        "scale": jnp.ones((n,), dtype),
    }


def _check_input_dim(name: Any, n: Any) -> int:
    if not isinstance(name, str) or not name:
        raise TypeError(f"model names must be non-empty strings, got {name!r}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"model {name!r}: input_dim must be an int >= 1, got {n!r}")
    return int(n)


def _standardisation(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-feature mean and one per-model scale (root mean variance), broadcast to ``(n,)``."""
    mean = jnp.mean(x, axis=0)
    rms = jnp.sqrt(jnp.mean((x - mean) ** 2))
    scale = jnp.where(rms > 0, rms, 1.0)
    return mean, jnp.full_like(mean, scale)


# --------------------------------------------------------------------------------------------
# Models side by side: the training code works on all models at once. Their features are
# concatenated (``N = Σ n_m`` columns), ``P_cat`` ``(N, d)`` stacks the projections by rows and
# ``R_cat`` ``(d, N)`` the reconstructions by columns; ``owner`` ``(N, M)`` one-hot says which
# model each feature belongs to. Most of the loss is then a few array operations whatever the
# number of models.


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


def _gcca(X: jax.Array, sizes: tuple[int, ...], d: int, config: ProjectionConfig) -> tuple:
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
    X = X - jnp.mean(X, axis=0)
    C = X.T @ X / B
    whiteners = []
    for c in _columns(sizes):
        w, V = linalg.eigh(C[c, c])
        w = jnp.maximum(w, 0.0)
        shift = (ridge + _JITTER) * jnp.maximum(jnp.mean(w), jnp.finfo(w.dtype).tiny)
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
    R_blocks = []
    for t, c in enumerate(_columns(sizes)):
        gram = jnp.einsum("s,nsk,nsl->kl", pair[:, t], Z, Z) / B
        gram = gram + (ridge + _JITTER * jnp.trace(gram) / d + _tiny(gram)) * jnp.eye(d)
        rhs = jnp.einsum("s,nsk,ni->ki", pair[:, t], Z, X[:, c]) / B
        R_blocks.append(linalg.solve(gram, rhs))
    return P_cat, jnp.concatenate(R_blocks, axis=1)


def _tiny(x: jax.Array) -> jax.Array:
    return jnp.asarray(jnp.finfo(x.dtype).tiny, x.dtype)


# --------------------------------------------------------------------------------------------
# Objectives (on standardised inputs, models side by side)


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
        cov=zc.T @ zc / B,
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
    params: Params, data: Mapping[str, ArrayLike], config: ProjectionConfig = _DEFAULT_CONFIG
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
    xs = _check_data(data, _input_dims(params), config)
    return _loss({m: params[m] for m in xs}, xs, config)


@jax.jit
def _loss(params: Params, xs: dict, config: ProjectionConfig) -> tuple:
    names = tuple(xs)
    X = jnp.concatenate([(xs[m] - params[m]["mean"]) / params[m]["scale"] for m in names], 1)
    P_cat = jnp.concatenate([params[m]["projection"] for m in names], axis=0)
    R_cat = jnp.concatenate([params[m]["reconstruction"] for m in names], axis=1)
    terms = _go_terms if config.objective == "go" else _invariant_terms
    return terms(P_cat, R_cat, X, tuple(xs[m].shape[1] for m in names), config)


# --------------------------------------------------------------------------------------------
# Training


def train_projections(
    params: Params,
    data: Mapping[str, ArrayLike],
    config: ProjectionConfig = _DEFAULT_CONFIG,
    *,
    key: jax.Array | None = None,
) -> tuple[Params, jax.Array]:
    """Trains the projections of the models in ``data`` on aligned samples (one jitted call).

    Models of ``params`` missing from ``data`` are returned unchanged. Sweep hyperparameters with
    ``jax.vmap(lambda lr: train_projections(params, data, config.replace(learning_rate=lr)))``,
    an ensemble by vmapping over ``key`` and the ``params`` of :func:`init_projections`.

    Args:
      params: per-model matrices ``{name: {"projection": (n, d), ...}}``.
      data: model name -> aligned samples ``(B, n_m)`` (row ``i`` of every model is sample
        ``i``), at least two registered models.
      config: objective, optimiser, schedule and weights (:class:`ProjectionConfig`).
      key: PRNG key for shuffling; ``jax.random.PRNGKey(config.seed)`` when ``None``.

    Returns:
      ``(params, loss_history)``: the updated parameters (the standardisation of the trained
      models included) and the loss averaged over each epoch's steps, ``(n_epochs,)``.
    """
    config = config.resolved()
    dims = _input_dims(params)
    xs = _check_data(data, dims, config)
    _check_hyperparameters(config)
    d = next(iter(params.values()))["projection"].shape[1]
    if config.latent_dim not in (0, d):
        raise ValueError(
            f"config.latent_dim={config.latent_dim} differs from the params' latent size {d}; "
            f"initialise params for it with init_projections(key, dims, {config.latent_dim})"
        )
    config = config.replace(latent_dim=0)  # checked; one compiled loop for 0 and d
    for name, x in xs.items():
        check_finite(x, f"data[{name!r}]")
    if key is None:
        key = jax.random.PRNGKey(config.seed)
    dtype = jnp.result_type(*xs.values(), *(params[m]["projection"] for m in xs), float)
    xs = {m: x.astype(dtype) for m, x in xs.items()}
    trained = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), {m: params[m] for m in xs})
    new, history = _fit(trained, xs, config, key)
    logger.debug(
        "trained %s (%s objective, %d epochs)", list(xs), config.objective, config.n_epochs
    )
    return {**params, **new}, history


def _input_dims(params: Params) -> dict[str, int]:
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a dict of per-model parameters, got {type(params)}")
    dims, d = {}, None
    for name, entry in params.items():
        if not isinstance(entry, Mapping) or set(entry) != set(_FIELDS):
            raise ValueError(f"params[{name!r}]: expected a dict with keys {_FIELDS}")
        n, d = entry["projection"].shape[0], d or entry["projection"].shape[1]
        shapes = {"projection": (n, d), "reconstruction": (d, n), "mean": (n,), "scale": (n,)}
        for field, shape in shapes.items():
            if jnp.shape(entry[field]) != shape:
                raise ValueError(
                    f"params[{name!r}][{field!r}]: expected shape {shape} (input size {n}, "
                    f"latent size {d}), got {jnp.shape(entry[field])}"
                )
        dims[name] = n
    return dims


def _check_data(
    data: Mapping[str, ArrayLike], dims: Mapping[str, int], config: ProjectionConfig
) -> dict[str, jax.Array]:
    """Shape checks (trace-time): the seed's four errors, then ranks, sizes and batch size."""
    if not isinstance(data, Mapping):
        raise TypeError(f"data: expected a dict of model name -> samples, got {type(data)}")
    if len(data) < 2:
        raise ValueError(
            f"data: training needs aligned samples from at least two models, got {list(data)}"
        )
    xs: dict[str, jax.Array] = {}
    first = None
    for name, x in data.items():
        if name not in dims:
            raise KeyError(f"data: model {name!r} is not registered; registered: {list(dims)}")
        x = jnp.asarray(x)
        if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
            raise TypeError(f"data[{name!r}]: expected real numbers, got dtype {x.dtype}")
        if x.ndim != 2:
            raise ValueError(
                f"data[{name!r}]: expected a 2-D array (n_samples, {dims[name]}), "
                f"got shape {x.shape}"
            )
        if x.shape[1] != dims[name]:
            raise ValueError(
                f"data[{name!r}]: expected feature length {dims[name]} (the model's registered "
                f"input_dim), got {x.shape[1]}"
            )
        if first is not None and x.shape[0] != xs[first].shape[0]:
            raise ValueError(
                f"data[{name!r}]: mismatched sample counts: expected {xs[first].shape[0]} "
                f"aligned samples (as data[{first!r}]), got {x.shape[0]}"
            )
        first = first or name
        xs[name] = x
    B = xs[first].shape[0]
    if B == 0:
        raise ValueError("data: no training samples (every model has 0 rows)")
    if config.objective == "invariant" and B < 2:
        raise ValueError(f"data: the 'invariant' objective needs at least 2 samples, got {B}")
    bs = config.batch_size
    if bs is not None and bs > B:
        raise ValueError(f"config.batch_size={bs} exceeds the {B} training samples")
    if bs is not None and bs < 2 and config.objective == "invariant":
        raise ValueError("config.batch_size: the 'invariant' objective needs batches of >= 2")
    return xs


def _check_hyperparameters(config: ProjectionConfig) -> None:
    """Value checks of the float fields that are concrete (traced ones are the caller's)."""
    for field, low, low_ok, high in (
        ("learning_rate", 0.0, False, math.inf),
        ("alignment_weight", 0.0, True, math.inf),
        ("whitening_weight", 0.0, True, math.inf),
        ("self_weight", 0.0, True, math.inf),
        ("ridge", 0.0, True, math.inf),
        ("lr_decay", 0.0, False, 1.0),
    ):
        value = getattr(config, field)
        if isinstance(value, jax.core.Tracer):
            continue
        arr = np.asarray(value)
        if arr.ndim != 0:
            raise ValueError(
                f"config.{field}: expected a scalar, got shape {arr.shape} "
                "(vmap over train_projections to sweep it)"
            )
        v = float(arr)
        if not (v > low or (low_ok and v == low)) or not v <= high or math.isnan(v):
            bracket = "[" if low_ok else "("
            raise ValueError(
                f"config.{field}: expected a value in {bracket}{low}, {high}], got {v}"
            )


@jax.jit
def _fit(params: Params, xs: dict, config: ProjectionConfig, key: jax.Array) -> tuple:
    names = tuple(xs)
    sizes = tuple(xs[m].shape[1] for m in names)
    go = config.objective == "go"
    if go:  # the seed has no standardisation
        stats = {
            m: (jnp.zeros_like(params[m]["mean"]), jnp.ones_like(params[m]["scale"])) for m in names
        }
    else:
        stats = {m: _standardisation(xs[m]) for m in names}
    X = jnp.concatenate([(xs[m] - stats[m][0]) / stats[m][1] for m in names], axis=1)
    B, dtype = X.shape[0], X.dtype
    d = params[names[0]]["projection"].shape[1]
    if config.init == "gcca":
        P, R = _gcca(X, sizes, d, config)
    else:
        P = jnp.concatenate([params[m]["projection"] for m in names], axis=0)
        R = jnp.concatenate([params[m]["reconstruction"] for m in names], axis=1)

    direction = optax.scale_by_adam() if config.optimizer == "adam" else optax.identity()
    bs = min(config.batch_size or B, B)
    n_batches = -(-B // bs)
    if go:
        step, full = _go_step, X
    elif bs == B:  # the full-batch loss needs only the moments: compute them once
        step = functools.partial(_invariant_step, terms=_invariant_terms_from_moments)
        full = (jnp.mean(X, axis=0), X.T @ X / B)
    else:
        step, full = functools.partial(_invariant_step, terms=_invariant_terms), None

    def epoch(carry, t):
        P, R, state_P, state_R, key = carry
        lr = config.learning_rate * config.lr_decay ** t.astype(dtype)

        def batch(carry, idx):
            xb = full if idx is None else X[idx]
            return step(*carry, xb, sizes, lr, direction, config)

        if bs == B:
            (P, R, state_P, state_R), loss = batch((P, R, state_P, state_R), None)
        else:
            key, sub = jax.random.split(key)
            order = jax.random.permutation(sub, B) if config.shuffle else jnp.arange(B)
            order = jnp.concatenate([order, order[: n_batches * bs - B]]).reshape(n_batches, bs)
            (P, R, state_P, state_R), losses = jax.lax.scan(batch, (P, R, state_P, state_R), order)
            loss = jnp.mean(losses)
        return (P, R, state_P, state_R, key), loss

    carry = (P, R, direction.init(P), direction.init(R), key)
    (P, R, *_), history = jax.lax.scan(epoch, carry, jnp.arange(config.n_epochs))
    Ps, Rs = _split(P, R, sizes)
    new = {
        m: {"projection": p, "reconstruction": r, "mean": stats[m][0], "scale": stats[m][1]}
        for m, p, r in zip(names, Ps, Rs, strict=True)
    }
    return new, history


def _descend(x: jax.Array, grad: jax.Array, state: Any, lr: jax.Array, direction: Any) -> tuple:
    update, state = direction.update(grad, state, x)
    return x - lr * update, state


def _invariant_step(P, R, state_P, state_R, batch, sizes, lr, direction, config, *, terms):
    (loss, _), (g_P, g_R) = jax.value_and_grad(terms, argnums=(0, 1), has_aux=True)(
        P, R, batch, sizes, config
    )
    P, state_P = _descend(P, g_P, state_P, lr, direction)
    R, state_R = _descend(R, g_R, state_R, lr, direction)
    return (P, R, state_P, state_R), loss


def _go_step(P, R, state_P, state_R, X, sizes, lr, direction, config):
    """The seed's step: ``R`` first, then ``P`` with the errors sent back through the new ``R``."""
    B = X.shape[0]
    loss, _ = _go_terms(P, R, X, sizes, config)
    cols, Z, zbar, errors = _go_parts(P, R, X, sizes)
    g_R = jnp.concatenate([z.T @ e for z, e in zip(Z, errors, strict=True)], axis=1) / B
    R, state_R = _descend(R, g_R, state_R, lr, direction)
    g_P = [
        X[:, c].T @ (e @ R[:, c].T + config.alignment_weight * (z - zbar))
        for c, z, e in zip(cols, Z, errors, strict=True)
    ]
    P, state_P = _descend(P, jnp.concatenate(g_P, axis=0) / B, state_P, lr, direction)
    return (P, R, state_P, state_R), loss


# --------------------------------------------------------------------------------------------
# The immutable space


@jax.jit
def _project(entry: dict, x: jax.Array) -> jax.Array:
    return ((x - entry["mean"]) / entry["scale"]) @ entry["projection"]


@jax.jit
def _retrieve(entry: dict, z: jax.Array) -> jax.Array:
    return (z @ entry["reconstruction"]) * entry["scale"] + entry["mean"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class SharedSpace:
    """A shared latent space of size ``dim`` that registered models project into and read from.

    Immutable and a pytree (``params`` are the leaves): :meth:`register` and :meth:`train` return
    new spaces. Start with ``SharedSpace(dim, seed=0)``; ``names`` and ``params`` are filled by
    :meth:`register` (``params`` as in :func:`init_projections`).

    Example::

      space = SharedSpace(8).register("image", 64).register("text", 32)
      space = space.train({"image": x_img, "text": x_txt})       # aligned rows
      x_txt_hat = space.translate("image", "text", x_img[:5])    # (5, 32)
    """

    dim: int = dataclasses.field(metadata={"static": True})
    seed: int = dataclasses.field(default=0, metadata={"static": True})
    names: tuple[str, ...] = dataclasses.field(default=(), metadata={"static": True}, kw_only=True)
    params: Params = dataclasses.field(default_factory=dict, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int | np.integer) or self.dim < 1:
            raise ValueError(f"SharedSpace: dim must be an int >= 1, got {self.dim!r}")
        check_positive_int(self.seed, "SharedSpace.seed", minimum=0)

    @property
    def input_dims(self) -> dict[str, int]:
        """Model name -> registered input size, in registration order."""
        return {m: self.params[m]["projection"].shape[0] for m in self.names}

    def register(self, name: str, input_dim: int, *, replace: bool = False) -> SharedSpace:
        """Adds a model with Xavier-uniform matrices (drawn from ``seed`` and the name).

        Args:
          name: the model's name.
          input_dim: its feature size ``n >= 1``.
          replace: re-register (fresh matrices) a name that is already registered.

        Returns:
          A new space with the model added.
        """
        n = _check_input_dim(name, input_dim)
        if name in self.names and not replace:
            raise ValueError(
                f"register: model {name!r} is already registered (input_dim="
                f"{self.input_dims[name]}); pass replace=True to re-register it"
            )
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), zlib.crc32(name.encode()) >> 1)
        entry = init_projections(key, {name: n}, self.dim)[name]
        names = self.names if name in self.names else (*self.names, name)
        return dataclasses.replace(self, names=names, params={**self.params, name: entry})

    def train(
        self,
        data: Mapping[str, ArrayLike],
        config: ProjectionConfig = _DEFAULT_CONFIG,
        *,
        return_history: bool = False,
    ) -> SharedSpace | tuple[SharedSpace, jax.Array]:
        """Trains the projections on aligned samples (:func:`train_projections`).

        Args:
          data: model name -> samples ``(B, n_m)``, row ``i`` of every model being sample ``i``;
            at least two registered models (others keep their matrices). NaN and infinity are
            refused.
          config: :class:`ProjectionConfig`; a ``latent_dim`` other than 0 and ``dim`` gives a
            space of that size, every model re-initialised first.
          return_history: also return the loss per epoch, ``(n_epochs,)``.

        Returns:
          The trained space (and the loss history when asked).
        """
        space = self
        if config.latent_dim not in (0, self.dim):
            space = SharedSpace(config.latent_dim, self.seed)
            for name, n in self.input_dims.items():
                space = space.register(name, n)
        params, history = train_projections(space.params, data, config)
        space = dataclasses.replace(space, params=params)
        return (space, history) if return_history else space

    def project(self, name: str, x: ArrayLike) -> jax.Array:
        """Maps features ``(n,)`` or ``(B, n)`` of model ``name`` to latents ``(d,)``/``(B, d)``."""
        entry = self._entry(name)
        return _project(entry, _vectors(x, entry["projection"].shape[0], f"project({name!r})"))

    def retrieve(self, name: str, z: ArrayLike) -> jax.Array:
        """Maps latents ``(d,)`` or ``(B, d)`` to model ``name``'s features ``(n,)``/``(B, n)``."""
        entry = self._entry(name)
        return _retrieve(entry, _vectors(z, self.dim, f"retrieve({name!r})", "latent"))

    def translate(self, src: str, dst: str, x: ArrayLike) -> jax.Array:
        """Features of ``src`` ``(n_src,)``/``(B, n_src)`` as features of ``dst``: ``retrieve(dst,
        project(src, x))``."""
        self._entry(dst)
        return self.retrieve(dst, self.project(src, x))

    def _entry(self, name: str) -> dict:
        if name not in self.params:
            raise KeyError(
                f"model {name!r} is not registered; registered models: {list(self.names)}"
            )
        return self.params[name]

    def __repr__(self) -> str:
        return f"SharedSpace(dim={self.dim}, seed={self.seed}, models={self.input_dims})"

    # ----------------------------------------------------------------------------------------
    # Files

    def save(self, path: str | os.PathLike) -> None:
        """Writes the space to ``path`` atomically (an ``.npz`` with a JSON header, no pickle).

        The file is written to a temporary file in the same folder and renamed over ``path``,
        so a crash leaves either the old file or the new one.
        """
        header = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "dim": self.dim,
            "seed": self.seed,
            "models": [{"name": m, "input_dim": n} for m, n in self.input_dims.items()],
        }
        arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
        for i, m in enumerate(self.names):
            for field in _FIELDS:
                arrays[f"model{i}.{field}"] = np.asarray(self.params[m][field])
        path = os.fspath(path)
        folder, base = os.path.split(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            # mkstemp makes the file private (0600); keep the mode of a file being replaced.
            os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> SharedSpace:
        """Reads a space written by :meth:`save`; anything else raises ``ValueError``."""
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except FileNotFoundError:
            raise
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise ValueError(f"{path}: not a readable SharedSpace file ({exc})") from exc
        if not isinstance(arrays, dict):  # a plain .npy file
            raise ValueError(f"{path}: not a SharedSpace file (a single array, no header)")
        header = _read_header(path, arrays)
        space = cls(header["dim"], header["seed"])
        params = {}
        for i, model in enumerate(header["models"]):
            name, n = model["name"], model["input_dim"]
            shapes = {"projection": (n, space.dim), "reconstruction": (space.dim, n)}
            entry = {}
            for field in _FIELDS:
                a = arrays.pop(f"model{i}.{field}", None)
                expected = shapes.get(field, (n,))
                if a is None or a.shape != expected or a.dtype.kind != "f":
                    got = "nothing" if a is None else f"{a.dtype} {a.shape}"
                    raise ValueError(
                        f"{path}: model {name!r}: expected {field} of shape {expected}, got {got}"
                    )
                if not np.all(np.isfinite(a)):
                    raise ValueError(f"{path}: model {name!r}: {field} contains NaN or infinity")
                entry[field] = jnp.asarray(a)
            params[name] = entry
        if arrays:
            raise ValueError(f"{path}: unexpected entries {sorted(arrays)}")
        names = tuple(m["name"] for m in header["models"])
        return dataclasses.replace(space, names=names, params=params)


def _read_header(path: str, arrays: dict) -> dict:
    raw = arrays.pop("header", None)
    try:
        if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError("no header")
        header = json.loads(raw.tobytes().decode())
        if not isinstance(header, dict) or header.get("format") != _FORMAT:
            raise ValueError("foreign header")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a SharedSpace file ({exc})") from exc
    version = header.get("version")
    if version != _FORMAT_VERSION:
        raise ValueError(
            f"{path}: SharedSpace file format version {version!r}; this space_jax reads "
            f"version {_FORMAT_VERSION}"
        )
    models = header.get("models")
    ok = (
        _is_int(header.get("dim"), 1)
        and _is_int(header.get("seed"), 0)
        and isinstance(models, list)
        and all(
            isinstance(m, dict)
            and isinstance(m.get("name"), str)
            and m["name"]
            and _is_int(m.get("input_dim"), 1)
            for m in models
        )
        and len({m["name"] for m in models}) == len(models)
    )
    if not ok:
        raise ValueError(f"{path}: malformed SharedSpace header {header}")
    return header


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _vectors(x: ArrayLike, n: int, where: str, what: str = "features") -> jax.Array:
    x = jnp.asarray(x)
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise TypeError(f"{where}: expected real {what}, got dtype {x.dtype}")
    if x.ndim not in (1, 2) or x.shape[-1] != n:
        raise ValueError(f"{where}: expected {what} of shape ({n},) or (B, {n}), got {x.shape}")
    return x
