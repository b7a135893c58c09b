"""The SPACE losses, as spacelearn's ``spacelearn.loss``, differentiable in torch.

Each call is one jitted XLA call that also returns the gradients of the inputs that require
grad (``Z``, and tensors inside ``W``, ``A``, ``Y``, ``W_prev``); ``loss.backward()`` fills
their ``.grad``.
"""

from __future__ import annotations

import torch

import space_jax as _sj
from space_torch_bridge import _autograd
from space_torch_bridge.settings import solver_options

__all__ = [
    "alignment_loss",
    "combined_loss",
    "disentanglement_loss",
    "isotropy_loss",
    "stability_loss",
]

Tensors = dict[str, torch.Tensor]


def _pair_order(W: Tensors) -> dict:
    """The quantity order of the disentanglement pairs: the dict's own, as spacelearn's loops.

    It matters because each pair is normalised by the size of its first basis; ``space_jax``
    defaults to sorted names (what a jitted dict gives) and takes the order as a keyword.
    """
    return {"order": tuple(W)} if isinstance(W, dict) else {}


def alignment_loss(Z: torch.Tensor, W: Tensors, A: Tensors, Y: Tensors) -> torch.Tensor:
    """``mean_q mean((Zc @ W_q.T @ A_q - Yc_q) ** 2)``; targets are flattened to ``(B, m_q)``."""
    return _autograd.call(
        _sj.alignment_loss,
        (Z, W, A, Y),
        names=("Z", "W", "A", "Y"),
        label="alignment_loss",
        loss=True,
    )


def disentanglement_loss(Z: torch.Tensor, W: Tensors) -> torch.Tensor:
    """Mean over pairs ``i < j`` of ``trace(Corr.T @ Corr) / k_i``; 0 for one quantity."""
    return _autograd.call(
        _sj.disentanglement_loss,
        (Z, W),
        names=("Z", "W"),
        label="disentanglement_loss",
        static=_pair_order(W),
        loss=True,
    )


def isotropy_loss(Z: torch.Tensor, W: Tensors, n_dir: int = 32) -> torch.Tensor:
    """Spread of the first ``n_dir`` singular values of the residual outside all subspaces."""
    static, extras = solver_options(_sj.isotropy_loss)
    return _autograd.call(
        _sj.isotropy_loss,
        (Z, W),
        names=("Z", "W"),
        label="isotropy_loss",
        static={**static, "n_dir": n_dir},
        extras=extras,
        loss=True,
    )


def stability_loss(W: Tensors, W_prev: Tensors) -> torch.Tensor:
    """``mean_q ||W_q - W_prev_q||_F ** 2``, or 0 when ``W_prev`` is None.

    With ``W_prev=None`` the result is a constant, as in spacelearn: ``W.grad`` stays None.
    """
    return _autograd.call(
        _sj.stability_loss,
        (W, W_prev),
        names=("W", "W_prev"),
        label="stability_loss",
        loss=True,
        differentiable=W_prev is not None,
    )


def combined_loss(
    Z: torch.Tensor,
    W: Tensors,
    A: Tensors,
    Y: Tensors,
    W_prev: Tensors,
    *,
    n_dir: int = 32,
) -> torch.Tensor:
    """The SPACE objective: alignment + disentanglement + isotropy + stability.

    Args:
      Z: latents ``(B, D)``.
      W: ``{q: (k_q, D)}`` bases.
      A: ``{q: (k_q, m_q)}`` decoders.
      Y: ``{q: (B, ...)}`` pooled targets.
      W_prev: previous bases, or None.
      n_dir: leading singular values used by the isotropy term.

    Returns:
      A scalar tensor with ``Z``'s device and the inputs' promoted dtype.
    """
    static, extras = solver_options(_sj.combined_loss)
    return _autograd.call(
        _sj.combined_loss,
        (Z, W, A, Y, W_prev),
        names=("Z", "W", "A", "Y", "W_prev"),
        label="combined_loss",
        static={**static, **_pair_order(W), "n_dir": n_dir},
        extras=extras,
        loss=True,
    )
