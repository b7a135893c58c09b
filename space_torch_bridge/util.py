"""SVD back ends, as spacelearn's ``spacelearn.util``: ``space_jax``'s, chosen by ``config``."""

from __future__ import annotations

import torch

import space_jax as _sj
from space_torch_bridge import _autograd
from space_torch_bridge.settings import solver_options

__all__ = ["left", "right", "full", "singular_values"]


def _svd(fn, A: torch.Tensor, label: str):
    static, extras = solver_options(fn)
    return _autograd.call(fn, (A,), names=("A",), label=label, static=static, extras=extras)


def left(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and singular values ``(U (H, r), S (r,))`` of ``A (H, W)``."""
    return _svd(_sj.left, A, "left")


def right(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right singular vectors as rows and singular values ``(Vh (r, W), S (r,))``."""
    return _svd(_sj.right, A, "right")


def full(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U, S, Vh)`` with ``A = U @ diag(S) @ Vh``."""
    return _svd(_sj.full, A, "full")


def singular_values(A: torch.Tensor) -> torch.Tensor:
    """Singular values of ``A``, descending."""
    return _svd(_sj.singular_values, A, "singular_values")
