"""Checks of the bridge's non-tensor arguments, run on every call before any cache is used.

The compiled functions are cached per spec (:mod:`._spec`), whose static keywords keep their
types, so ``k=True``, ``k=1`` and ``k=1.0`` never share an entry; these checks make the answer
the same on the first call and every later one, in a fresh process or not. They are plain Python
on constants, which ``torch.compile`` runs while tracing.

Where spacelearn 0.1.0 raises for an argument, the bridge raises the same exception type with the
same key phrase first (``Invalid mode``, ``Invalid number of dimensions``, ``Type mismatch for
argument``), then its own detail.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["check_k", "check_mode", "check_pool_rank", "check_positive_int", "static_int"]

POOL_MODES = ("avg", "max")


def static_int(value: Any) -> Any:
    """A ``torch.SymInt`` (an int that ``torch.compile`` made dynamic) as a Python int."""
    return int(value) if isinstance(value, torch.SymInt) else value


def check_positive_int(value: Any, name: str, label: str, minimum: int = 1) -> int:
    """An int ``>= minimum`` (bools, floats and strings are refused: ``TypeError``)."""
    value = static_int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{label}: {name}: expected an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{label}: {name}: expected an int >= {minimum}, got {value}")
    return value


def check_k(k: Any, label: str) -> Any:
    """``k``: an int >= 1, or a dict ``{quantity: int >= 1}`` (checked against ``Y``'s keys
    where the subspaces are computed)."""
    if isinstance(k, Mapping):
        return {q: check_positive_int(v, f"k[{q!r}]", label) for q, v in k.items()}
    return check_positive_int(k, "k", label)


def check_mode(mode: Any, label: str) -> str:
    """A pooling mode; spacelearn's ``ValueError("Invalid mode: ...")`` phrase first."""
    if not isinstance(mode, str) or mode not in POOL_MODES:
        raise ValueError(
            f"Invalid mode: {mode}. {label}: mode must be 'avg' or 'max', got {mode!r}"
        )
    return mode


def check_pool_rank(chunks: Any, name: str, label: str) -> None:
    """2 or 4 dims; spacelearn's ``ValueError("Invalid number of dimensions: ...")`` first."""
    if not isinstance(chunks, torch.Tensor):
        raise TypeError(f"{label}: {name} must be a torch.Tensor, got {type(chunks).__name__}")
    ndims = chunks.dim()
    if ndims not in (2, 4):
        raise ValueError(
            f"Invalid number of dimensions: {ndims}. Expected 2 (B, S) or 4 (B, C, H, W). "
            f"{label}: {name} has shape {tuple(chunks.shape)}"
        )
