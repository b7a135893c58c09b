"""Flax NNX integration: the SPACE subspaces as non-trainable state of a model.

:class:`SpaceRegularizer` is an ``nnx.Module`` that holds the current :class:`~space_jax.Space`
(bases ``W``, decoders ``A``, target directions ``V``), the bases of the previous refresh and the
loss weights, all in :class:`SpaceState` variables. ``SpaceState`` is not an ``nnx.Param``, so
``nnx.Optimizer(model, tx, wrt=nnx.Param)`` and ``nnx.grad`` leave it alone, while ``nnx.jit``
carries it in and out of compiled steps like any other state.

Every array has a fixed shape from construction on (zeros until the first refresh), so
refreshing the subspaces or changing the weights only changes values: an ``nnx.jit``-ed train
step compiled once keeps running without being traced again. Typical use::

    from flax import nnx
    from space_jax.nnx import SpaceRegularizer

    class Model(nnx.Module):
        def __init__(self, latent_dim, target_shapes, k, rngs):
            self.encoder = nnx.Linear(64, latent_dim, rngs=rngs)
            self.space = SpaceRegularizer(latent_dim, target_shapes, k=k)

    @nnx.jit
    def refresh(model, x_ref, y_ref):  # every few epochs
        model.space.refresh(model.encoder(x_ref), y_ref)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            z = model.encoder(x)
            return task_loss(model, z, x) + model.space.loss(z, y)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

This module imports ``flax.nnx``; import it explicitly (``import space_jax.nnx``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from ._checks import check_positive_int
from .linalg import Solver
from .losses import (
    LossWeights,
    alignment_loss,
    combined_loss,
    disentanglement_loss,
    isotropy_loss,
    stability_loss,
)
from .metrics import subspace_change
from .subspaces import Space, solve_subspaces

__all__ = ["SpaceRegularizer", "SpaceState"]


class SpaceState(nnx.Variable):
    """Non-trainable SPACE state: bases, decoders, previous bases, loss weights, counters."""


def _target_size(shape, name: str) -> int:
    if isinstance(shape, int):
        return check_positive_int(shape, name)
    shape = tuple(shape)
    for i, s in enumerate(shape):
        check_positive_int(s, f"{name}[{i}]")
    return math.prod(shape) if shape else 1


class SpaceRegularizer(nnx.Module):
    """The SPACE loss with its subspaces kept as refreshable, non-trainable state.

    Attributes:
      space: ``SpaceState`` holding the current :class:`~space_jax.Space` (``W``, ``A``, ``V``).
      W_prev: ``SpaceState`` holding the bases before the last refresh (the bases of the first
        refresh until there is a second), used by the stability term.
      weights: ``SpaceState`` holding :class:`~space_jax.LossWeights` as arrays; change them
        with :meth:`set_weights` (a warm-up schedule, say) without recompiling.
      refreshes: ``SpaceState``, number of refreshes so far (int32 scalar).
      drift: ``SpaceState``, ``{q: mean angle in degrees}`` between the bases before and after
        the last refresh (:func:`~space_jax.subspace_change`); 0 after the first.
    """

    def __init__(
        self,
        latent_dim: int,
        target_shapes: Mapping[str, int | tuple[int, ...]],
        *,
        k: int | Mapping[str, int] = 32,
        n_dir: int = 32,
        weights: LossWeights | tuple | None = None,
        solver: Solver = "auto",
        dtype=None,
    ):
        """Zero state with the shapes a refresh will produce.

        Args:
          latent_dim: ``D``, the width of the latents passed to :meth:`refresh` and :meth:`loss`.
          target_shapes: ``{q: shape}``, each target's shape without the batch axis (or its
            flattened size ``m_q``), e.g. ``{"field": (1, 4, 4), "energy": 1}``.
          k: rows per basis, an int or ``{q: int}`` (static); capped at ``min(D, m_q)`` as in
            :func:`~space_jax.solve_subspaces`.
          n_dir: leading singular values of the isotropy term (static).
          weights: initial :class:`~space_jax.LossWeights` (default 1 each).
          solver: SVD solver of the refresh (static).
          dtype: floating dtype of the state (default: JAX's default float type).
        """
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        if not isinstance(target_shapes, Mapping) or len(target_shapes) == 0:
            raise ValueError("target_shapes: expected a non-empty dict {quantity: shape}")
        sizes = {q: _target_size(s, f"target_shapes[{q!r}]") for q, s in target_shapes.items()}
        self.k = dict(k) if isinstance(k, Mapping) else k
        self.n_dir = check_positive_int(n_dir, "n_dir")
        self.solver = solver
        dtype = jnp.zeros(()).dtype if dtype is None else jnp.dtype(dtype)
        # solve_subspaces decides the basis sizes; ask it rather than repeat its rule.
        shapes = jax.eval_shape(
            lambda z, y: solve_subspaces(z, y, k=self.k, solver=solver),
            jax.ShapeDtypeStruct((2, self.latent_dim), dtype),
            {q: jax.ShapeDtypeStruct((2, m), dtype) for q, m in sizes.items()},
        )
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        self.space = SpaceState(zeros)
        self.W_prev = SpaceState(dict(zeros.W))
        self.weights = SpaceState(_weights(weights, dtype))
        self.refreshes = SpaceState(jnp.zeros((), jnp.int32))
        self.drift = SpaceState({q: jnp.zeros((), dtype) for q in zeros.W})

    @classmethod
    def from_reference(
        cls,
        Z_ref: jax.typing.ArrayLike,
        Y_ref: Mapping,
        *,
        k: int | Mapping[str, int] = 32,
        n_dir: int = 32,
        weights: LossWeights | tuple | None = None,
        solver: Solver = "auto",
    ) -> SpaceRegularizer:
        """A regularizer sized from reference latents ``(B, D)`` and targets, refreshed on them."""
        Z_ref = jnp.asarray(Z_ref)
        if Z_ref.ndim != 2:
            raise ValueError(f"Z_ref: expected latents of shape (B, D), got shape {Z_ref.shape}")
        if not isinstance(Y_ref, Mapping) or len(Y_ref) == 0:
            raise ValueError("Y_ref: expected a non-empty dict of per-quantity targets")
        shapes = {q: tuple(jnp.shape(y))[1:] for q, y in Y_ref.items()}
        reg = cls(
            Z_ref.shape[1],
            shapes,
            k=k,
            n_dir=n_dir,
            weights=weights,
            solver=solver,
            dtype=Z_ref.dtype,
        )
        reg.refresh(Z_ref, Y_ref)
        return reg

    @nnx.jit
    def refresh(
        self,
        Z_ref: jax.typing.ArrayLike,
        Y_ref: Mapping,
        active_k: jax.typing.ArrayLike | Mapping | None = None,
    ) -> dict[str, jax.Array]:
        """Refits the subspaces and decoders on reference latents and targets (jitted).

        The current bases become ``W_prev``; gradients do not flow into the refit (the
        reference's ``torch.no_grad``). Shapes never change, so steps compiled before keep
        their compilation. Call it eagerly or inside your own ``nnx.jit`` function.

        Args:
          Z_ref: reference latents ``(B, D)``.
          Y_ref: ``{q: (B, ...)}`` reference targets, the quantities given at construction.
          active_k: optional traced number of active rows per basis (an int array or
            ``{q: int array}``, see :func:`~space_jax.solve_subspaces`).

        Returns:
          ``{q: mean angle in degrees}`` between the previous and the new bases (0 on the
          first refresh).
        """
        new = solve_subspaces(
            jax.lax.stop_gradient(Z_ref), Y_ref, k=self.k, solver=self.solver, active_k=active_k
        )
        old = self.space.get_value()
        _check_same_layout(old, new)
        first = self.refreshes[...] == 0
        drift = {
            q: jnp.where(first, 0.0, subspace_change(old.W[q], new.W[q])["mean_angle_deg"])
            for q in new.W
        }
        self.W_prev.set_value({q: jnp.where(first, new.W[q], old.W[q]) for q in new.W})
        self.space.set_value(new)
        self.drift.set_value(
            {q: d.astype(self.drift.get_value()[q].dtype) for q, d in drift.items()}
        )
        self.refreshes[...] = self.refreshes[...] + 1
        return drift

    def set_weights(self, weights: LossWeights | tuple) -> None:
        """Replaces the loss weights (values only: no recompilation)."""
        dtype = self.weights.get_value().alignment.dtype
        self.weights.set_value(_weights(weights, dtype))

    def loss(
        self,
        Z: jax.typing.ArrayLike,
        Y: Mapping,
        *,
        weights: LossWeights | tuple | None = None,
    ) -> jax.Array:
        """The weighted SPACE loss of a batch (:func:`~space_jax.combined_loss`).

        Args:
          Z: latents ``(B, D)`` (differentiable).
          Y: ``{q: (B, ...)}`` targets.
          weights: per-call weights (may be traced); default the stored ``weights``.

        Returns:
          A scalar.
        """
        space = self.space.get_value()
        weights = self.weights.get_value() if weights is None else weights
        return combined_loss(
            Z, space.W, space.A, Y, self.W_prev.get_value(), n_dir=self.n_dir, weights=weights
        )

    def terms(self, Z: jax.typing.ArrayLike, Y: Mapping) -> dict[str, jax.Array]:
        """The four unweighted terms of a batch, by name (``alignment``, ...)."""
        space = self.space.get_value()
        return {
            "alignment": alignment_loss(Z, space.W, space.A, Y),
            "disentanglement": disentanglement_loss(Z, space.W),
            "isotropy": isotropy_loss(Z, space.W, n_dir=self.n_dir),
            "stability": stability_loss(space.W, self.W_prev.get_value()),
        }

    def loss_and_terms(
        self,
        Z: jax.typing.ArrayLike,
        Y: Mapping,
        *,
        weights: LossWeights | tuple | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """:meth:`loss` and :meth:`terms` from one evaluation of each term (for logging).

        The weighted sum of the terms is :meth:`loss` (``combined_loss`` is that sum).
        """
        terms = self.terms(Z, Y)
        weights = self.weights.get_value() if weights is None else LossWeights(*weights)
        loss = sum(w * terms[name] for name, w in zip(LossWeights._fields, weights, strict=True))
        return loss, terms

    def current(self) -> Space:
        """The current :class:`~space_jax.Space`."""
        return self.space.get_value()


def _weights(weights, dtype) -> LossWeights:
    weights = LossWeights() if weights is None else LossWeights(*weights)
    return LossWeights(*(jnp.asarray(w, dtype) for w in weights))


def _check_same_layout(old: Space, new: Space) -> None:
    for q in new.W:
        if q not in old.W or old.W[q].shape != new.W[q].shape:
            raise ValueError(
                f"Y_ref[{q!r}]: the refreshed basis has shape {new.W[q].shape}, but this "
                f"regularizer holds {old.W[q].shape if q in old.W else 'no such quantity'}; "
                "construct it with the targets' shapes"
            )
    missing = [q for q in old.W if q not in new.W]
    if missing:
        raise ValueError(f"Y_ref: missing the quantities {missing}")
