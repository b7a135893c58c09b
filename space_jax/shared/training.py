"""Training a shared space: Xavier initialisation and the jitted training loop.

Training is one jitted call: ``lax.scan`` over epochs, over mini-batches inside an epoch, optax
for the update direction. A full-batch epoch needs only the inputs' first and second moments,
computed once, so it costs ``O(N² d)`` (``N`` = all features) whatever the number of samples.
The float fields of :class:`ProjectionConfig` are pytree leaves, so ``train_projections`` vmaps
over learning rates, weights and keys.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from .._checks import check_finite, check_positive_int
from .._spmd import batch_contract, replicated
from .checks import check_data, check_input_dim, input_dims
from .config import DEFAULT_CONFIG, Params, ProjectionConfig, check_hyperparameters
from .gcca import gcca
from .objectives import (
    _go_parts,
    _go_terms,
    _invariant_terms,
    _invariant_terms_from_moments,
    _split,
    _standardisation,
)

__all__ = ["init_projections", "train_projections"]

logger = logging.getLogger(__name__)


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
    sizes = {name: check_input_dim(name, n) for name, n in dims.items()}
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


def train_projections(
    params: Params,
    data: Mapping[str, ArrayLike],
    config: ProjectionConfig = DEFAULT_CONFIG,
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
    dims = input_dims(params)
    xs = check_data(data, dims, config)
    check_hyperparameters(config)
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
    _check_trained(new, config)
    logger.debug(
        "trained %s (%s objective, %d epochs)", list(xs), config.objective, config.n_epochs
    )
    return {**params, **new}, history


def _check_trained(params: Params, config: ProjectionConfig) -> None:
    """Refuses parameters that training left NaN or infinite (when concrete, not under vmap)."""
    for name, entry in params.items():
        for field, value in entry.items():
            if isinstance(value, jax.core.Tracer):
                return
            if not bool(jnp.all(jnp.isfinite(value))):
                raise ValueError(
                    f"train_projections: training diverged, model {name!r}'s {field} contains "
                    f"NaN or infinity after {config.n_epochs} epochs ({config.objective!r} "
                    f"objective, learning_rate={config.learning_rate}); lower "
                    "config.learning_rate or standardise the data"
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
        P, R = gcca(X, sizes, d, config)
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
        full = (jnp.mean(X, axis=0), batch_contract(X, X) / B)
    else:
        step, full = functools.partial(_invariant_step, terms=_invariant_terms), None
    if bs < B:  # minibatches draw samples from every device: gather a sharded batch once
        X = replicated(X)

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
    g_R = jnp.concatenate([batch_contract(z, e) for z, e in zip(Z, errors, strict=True)], 1) / B
    R, state_R = _descend(R, g_R, state_R, lr, direction)
    g_P = [
        batch_contract(X[:, c], e @ R[:, c].T + config.alignment_weight * (z - zbar))
        for c, z, e in zip(cols, Z, errors, strict=True)
    ]
    P, state_P = _descend(P, jnp.concatenate(g_P, axis=0) / B, state_P, lr, direction)
    return (P, R, state_P, state_R), loss
