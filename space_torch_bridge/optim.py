"""Sizing, decoders and subspace metrics, as spacelearn's ``spacelearn.optim``.

The sizing functions return Python ints (``space_jax``'s host-level functions, which log
instead of printing); ``fit_decoders`` and ``subspace_change`` return torch tensors.
"""

from __future__ import annotations

import torch

import space_jax as _sj
from space_torch_bridge import _autograd

__all__ = [
    "align_latent_dim",
    "fit_decoders",
    "k_per_q",
    "minimal_latent_dim",
    "optimal_bins",
    "subspace_change",
]

Tensors = dict[str, torch.Tensor]

minimal_latent_dim = _sj.minimal_latent_dim
align_latent_dim = _sj.align_latent_dim


def fit_decoders(W: Tensors, Z: torch.Tensor, pooled_global: Tensors) -> Tensors:
    """Least-squares decoders ``{q: A_q (k_q, m_q)}`` with ``Zc @ W_q.T @ A_q ~ Yc_q``.

    Detached, as in spacelearn: decoders are fitted, not learned through backpropagation.
    """
    return _autograd.call(
        _sj.fit_decoders,
        (W, Z, pooled_global),
        names=("W", "Z", "Y"),
        label="fit_decoders",
        differentiable=False,
    )


def subspace_change(W_old: torch.Tensor, W_new: torch.Tensor) -> dict:
    """How far each direction moved: ``mean_cos_sim``, ``mean_angle_deg``, ``per_dir_cos``,
    ``similarity_matrix`` (torch tensors)."""
    return _autograd.call(
        _sj.subspace_change, (W_old, W_new), names=("W_old", "W_new"), label="subspace_change"
    )


def k_per_q(
    pooled_global: Tensors,
    threshold: float | dict[str, float] = 0.90,
    *,
    default_threshold: float | None = None,
    per_quantity: bool = True,
) -> int | dict[str, int]:
    """Components needed per quantity to explain ``threshold`` of its variance (exact)."""
    return _autograd.host_call(
        _sj.k_per_q,
        (pooled_global,),
        names=("Y",),
        label="k_per_q",
        static={
            "threshold": threshold,
            "default_threshold": default_threshold,
            "per_quantity": per_quantity,
        },
    )


def optimal_bins(
    pooled_targets_coarse: Tensors,
    max_bins: int = 16,
    variance_threshold: float | dict[str, float] = 0.95,
    *,
    default_threshold: float | None = None,
    per_quantity: bool = False,
) -> int | dict[str, int]:
    """Pooling grid side per quantity, ``ceil(sqrt(modes))`` clamped to ``[2, max_bins]``."""
    return _autograd.host_call(
        _sj.optimal_bins,
        (pooled_targets_coarse,),
        names=("Y",),
        label="optimal_bins",
        static={
            "max_bins": max_bins,
            "variance_threshold": variance_threshold,
            "default_threshold": default_threshold,
            "per_quantity": per_quantity,
        },
    )
