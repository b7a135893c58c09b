"""Sizing, decoders and subspace metrics, as spacelearn's ``spacelearn.optim``.

The sizing functions return Python ints (``space_jax``'s host-level functions, which log
instead of printing); compiled code runs them eagerly (``torch.compiler.disable``: a graph
break, so call them outside a ``fullgraph=True`` function). ``fit_decoders`` and
``subspace_change`` return torch tensors and are torch custom ops.

Shapes: ``Z`` ``(B, D)``; ``W`` ``{q: (k_q, D)}``; targets ``{q: (B, ...)}``, flattened to
``(B, m_q)`` (1-D targets are ``(B, 1)``).
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

_autograd.register("fit_decoders", _sj.fit_decoders, loss=False, differentiable=False)
_autograd.register("subspace_change", _sj.subspace_change, loss=False)
_CHANGE_KEYS = ("mean_cos_sim", "mean_angle_deg", "per_dir_cos", "similarity_matrix")


def fit_decoders(W: Tensors, Z: torch.Tensor, pooled_global: Tensors) -> Tensors:
    """Least-squares decoders from each subspace's coordinates to its target.

    ``S_q = Zc @ W_q.T``; ``A_q`` is the minimum-norm least-squares solution of
    ``S_q @ A_q ~ Yc_q`` (centered over the batch).

    Args:
      W: bases ``{q: (k_q, D)}``; the decoders are fitted for ``W``'s keys.
      Z: latents ``(B, D)``.
      pooled_global: targets ``{q: (B, ...)}`` with at least ``W``'s keys.

    Returns:
      ``{q: A_q (k_q, m_q)}``, detached, as in spacelearn: decoders are fitted, not learned
      through backpropagation.
    """
    keys = tuple(W) if isinstance(W, dict) else ()
    return _autograd.call(
        _sj.fit_decoders,
        (W, Z, pooled_global),
        names=("W", "Z", "Y"),
        label="fit_decoders",
        differentiable=False,
        output=("dict", keys, ("T",) * len(keys)),
    )


def subspace_change(W_old: torch.Tensor, W_new: torch.Tensor) -> dict:
    """How far each direction of a basis moved between two refreshes.

    ``G = |W_old @ W_new.T|`` clipped to ``[-1, 1]``; per row of ``W_old`` the best match;
    angles in degrees, those under 1e-3 set to 0.

    Args:
      W_old: the old basis ``(k, D)`` (orthonormal rows).
      W_new: the new basis ``(k', D)``.

    Returns:
      ``{"mean_cos_sim": (), "mean_angle_deg": (), "per_dir_cos": (k,),
      "similarity_matrix": (k, k')}``, torch tensors, differentiable as spacelearn's.
    """
    return _autograd.call(
        _sj.subspace_change,
        (W_old, W_new),
        names=("W_old", "W_new"),
        label="subspace_change",
        output=("dict", _CHANGE_KEYS, ("T",) * 4),
    )


@torch.compiler.disable
def k_per_q(
    pooled_global: Tensors,
    threshold: float | dict[str, float] = 0.90,
    *,
    default_threshold: float | None = None,
    per_quantity: bool = True,
) -> int | dict[str, int]:
    """How many components each target needs to explain ``threshold`` of its variance.

    Per target: centered singular values ``s``; ``spec = s**2 / (sum s**2 + 1e-8)``;
    ``k = count(cumsum(spec) < t) + 1``.

    Args:
      pooled_global: targets ``{q: (B, ...)}``.
      threshold: a float in ``(0, 1]`` (default 0.90), or ``{q: float}``.
      default_threshold: the fallback for quantities missing from a dict ``threshold``
        (else 0.90, as spacelearn).
      per_quantity: ``{q: k_q}`` (True, default) or their max (False).

    Returns:
      A dict of Python ints, or one int.

    Differences from spacelearn: the spectrum is always exact (spacelearn's auto solver
    sketches it above 100,000 elements); logs instead of printing; bad thresholds and
    NaN/inf targets raise ``ValueError``. Host-level (see the module docstring).
    """
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


@torch.compiler.disable
def optimal_bins(
    pooled_targets_coarse: Tensors,
    max_bins: int = 16,
    variance_threshold: float | dict[str, float] = 0.95,
    *,
    default_threshold: float | None = None,
    per_quantity: bool = False,
) -> int | dict[str, int]:
    """The pooling grid side each target needs.

    ``n_modes`` = components explaining ``variance_threshold`` of the target's variance
    (``cumsum(s**2) / (sum s**2 + 1e-8)``), then ``n = ceil(sqrt(n_modes))`` clamped to
    ``[2, max_bins]``.

    Args:
      pooled_targets_coarse: targets ``{q: (B, ...)}`` (1-D targets are ``(B, 1)``).
      max_bins: the largest side (default 16).
      variance_threshold: a float in ``(0, 1]`` (default 0.95), or ``{q: float}``.
      default_threshold: the fallback for quantities missing from a dict threshold.
      per_quantity: ``{q: n_q}`` (True) or their max (False, default).

    Returns:
      A dict of Python ints, or one int.

    Differences from spacelearn: 1-D targets work (spacelearn's fail); logs instead of
    printing; bad thresholds and NaN/inf targets raise ``ValueError``. Host-level.
    """
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
