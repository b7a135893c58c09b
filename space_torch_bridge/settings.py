"""Global settings, as spacelearn's ``spacelearn.settings``.

``config.solver_mode``, ``config.n_lowrank_iters`` and ``config.use_full_matrix`` are read at
every call and passed to ``space_jax`` as the static keywords ``solver``, ``n_iter`` and
``full_matrices`` of the functions that take them. ``space_jax`` itself has no global state.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = ["Settings", "config"]


@dataclass
class Settings:
    """Solver settings (spacelearn 0.1.0's fields and defaults).

    Attributes:
      solver_mode: ``"auto"`` (exact, the fastest route for the shape: unlike spacelearn it
        never switches to a randomised sketch), ``"svd"``, ``"eigen"`` or ``"lowrank"``.
      use_cpu_fallback: kept for compatibility; unused, as in spacelearn.
      device: kept for compatibility; unused, as in spacelearn (results follow the inputs).
      n_lowrank_iters: power iterations of ``"lowrank"``.
      use_full_matrix: square singular-vector matrices from ``"svd"``.
    """

    solver_mode: Literal["auto", "svd", "eigen", "lowrank"] = "auto"
    use_cpu_fallback: bool = False
    device: torch.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_lowrank_iters: int = 2
    use_full_matrix: bool = False


config = Settings()


def keywords(fn: Callable) -> frozenset[str]:
    """The keyword names ``fn`` accepts (computed once, at import, by each bridge module)."""
    return frozenset(inspect.signature(fn).parameters)


_SOLVERS = ("auto", "svd", "eigen", "lowrank")


def _checked() -> tuple[str, int, bool]:
    """``config``'s solver fields, checked (they are read, and so checked, at every call)."""
    mode, n_iter, full = config.solver_mode, config.n_lowrank_iters, config.use_full_matrix
    if not isinstance(mode, str) or mode not in _SOLVERS:
        raise ValueError(f"config.solver_mode: expected one of {_SOLVERS}, got {mode!r}")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"config.n_lowrank_iters: expected an int >= 0, got {n_iter!r}")
    if not isinstance(full, bool):
        raise TypeError(f"config.use_full_matrix: expected a bool, got {full!r}")
    return mode, n_iter, full


def solver_options(accepted: frozenset[str]) -> tuple[dict[str, Any], torch.Tensor | None]:
    """The settings a ``space_jax`` function accepts (``accepted``, from :func:`keywords`):
    ``(static, seed)``.

    ``static`` holds ``solver``, ``n_iter`` and ``full_matrices``; ``seed`` is, for
    ``"lowrank"``, an integer tensor drawn from torch's global generator (so that
    ``torch.manual_seed`` makes the sketch reproducible, as it does spacelearn's
    ``torch.svd_lowrank``) from which the op makes the PRNG key; otherwise None.
    """
    mode, n_iter, full = _checked()
    wanted = {"solver": mode, "n_iter": n_iter, "full_matrices": full}
    static = {k: v for k, v in wanted.items() if k in accepted}
    seed = None
    if mode == "lowrank" and "key" in accepted:
        seed = torch.randint(0, 2**31 - 1, (), dtype=torch.int64)
    return static, seed
