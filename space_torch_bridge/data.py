"""Pooling and the quantity registry, as spacelearn's ``spacelearn.data``.

``pool`` runs ``space_jax.pool`` on torch tensors (differentiable); ``compute_Q`` and
``ensure_dim`` are ``space_jax``'s own (they work on any array type, torch tensors included);
``to_device`` moves torch tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

import space_jax as _sj
from space_torch_bridge import _autograd

__all__ = ["compute_Q", "ensure_dim", "input_to_quantity", "pool", "to_device"]

compute_Q = _sj.compute_Q
ensure_dim = _sj.ensure_dim


def pool(chunks: torch.Tensor, n_bins: int, mode: str = "avg") -> torch.Tensor:
    """Adaptive pooling, with PyTorch's adaptive windows.

    Args:
      chunks: ``(B, C, H, W)`` fields, pooled to ``(B, C, n_bins, n_bins)``, or ``(B, S)``
        series, pooled to ``(B, n_bins)``.
      n_bins: bins per spatial axis.
      mode: ``"avg"`` or ``"max"``.
    """
    return _autograd.call(
        _sj.pool,
        (chunks,),
        names=("chunks",),
        label="pool",
        static={"n_bins": n_bins, "mode": mode, "name": "chunks"},
    )


def input_to_quantity(
    n_bins: int, mode: str, *arg_functions: Callable, **kwarg_functions: Callable
) -> Callable[..., dict[str, torch.Tensor]]:
    """A :func:`compute_Q` registry whose results are pooled to ``n_bins`` with :func:`pool`."""
    registry = _sj.compute_Q(*arg_functions, **kwarg_functions)
    return _sj.pool_quantities(registry, n_bins, mode, pool_fn=pool)


def to_device(
    func: Callable | None = None,
    *,
    device: str | torch.device = "cpu",
    targets: list[str] | None = None,
) -> Callable:
    """Decorator: moves tensor arguments to ``device`` with ``.to()`` before the call.

    Positional tensors always move; keyword tensors only when named in ``targets`` (all when
    None). Usable bare (``@to_device``) or with arguments (``@to_device(device="cuda")``).
    """
    if func is None:
        return functools.partial(to_device, device=device, targets=targets)

    def move(t):
        return t.to(device) if isinstance(t, torch.Tensor) else t

    @functools.wraps(func)
    def wrapped(*args, **kwargs):
        args = tuple(move(a) for a in args)
        kwargs = {k: move(v) if targets is None or k in targets else v for k, v in kwargs.items()}
        return func(*args, **kwargs)

    return wrapped
