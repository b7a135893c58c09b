"""Reductions over the batch axis, in one place, so they shard the same way everywhere.

Every SPACE statistic is a contraction over the batch axis (axis 0): Gram matrices, cross
products with the targets, means. On a mesh the batch is sharded while the statistics are small
and replicated, and JAX's sharding-in-types API (meshes with Explicit axes, ``jax.make_mesh``'s
default) asks the caller to say where such a contraction's result lives. Library code calls these
helpers for every batch contraction instead of writing ``x.T @ y`` or ``x.mean(0)`` itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["batch_contract", "batch_mean", "batch_sum"]


def batch_contract(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a.T @ b`` over the shared batch axis 0: ``(B, m) x (B, n) -> (m, n)``, replicated."""
    return a.T @ b


def batch_sum(x: jax.Array) -> jax.Array:
    """Sum over the batch axis 0: ``(B, ...) -> (...)``, replicated."""
    return jnp.sum(x, axis=0)


def batch_mean(x: jax.Array) -> jax.Array:
    """Mean over the batch axis 0: ``(B, ...) -> (...)``, replicated."""
    return jnp.mean(x, axis=0)
