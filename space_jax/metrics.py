"""Subspace comparison metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._checks import as_float

__all__ = ["subspace_change"]


def subspace_change(
    W_old: jax.typing.ArrayLike, W_new: jax.typing.ArrayLike
) -> dict[str, jax.Array]:
    """How far each direction of an orthonormal basis moved.

    ``G = clip(|W_old @ W_new.T|, -1, 1)``; each old direction is matched with its most similar
    new one; angles under 1e-3 degrees count as 0 (rounding noise).

    Args:
      W_old: ``(k, D)`` basis with orthonormal rows.
      W_new: ``(k', D)`` basis with orthonormal rows.

    Returns:
      ``{"mean_cos_sim": (), "mean_angle_deg": (), "per_dir_cos": (k,),
      "similarity_matrix": (k, k')}``.
    """
    W_old, W_new = as_float(W_old, "W_old"), as_float(W_new, "W_new")
    if W_old.ndim != 2 or W_new.ndim != 2 or W_old.shape[1] != W_new.shape[1]:
        raise ValueError(
            f"W_old, W_new: expected bases (k, D) with the same D, got {W_old.shape} and "
            f"{W_new.shape}"
        )
    g = jnp.abs(W_old @ W_new.T)
    # clip(g, -1, 1), with torch.clamp's derivative at the bound (1 at g == 1, where jnp.clip
    # gives 1/2: a direction that did not move has g == 1 exactly); g >= 0, so -1 never binds.
    g = jnp.where(g > 1.0, jnp.ones_like(g), g)
    per_dir = g.max(axis=1)
    angles = jnp.degrees(jnp.arccos(per_dir))
    angles = jnp.where(angles < 1e-3, 0.0, angles)
    return {
        "mean_cos_sim": per_dir.mean(),
        "mean_angle_deg": angles.mean(),
        "per_dir_cos": per_dir,
        "similarity_matrix": g,
    }
