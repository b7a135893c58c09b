"""Global settings, as spacelearn's ``spacelearn.settings``.

``config.solver_mode``, ``config.n_lowrank_iters`` and ``config.use_full_matrix`` are read at
every call and passed to ``space_jax`` as the static keywords ``solver``, ``n_iter`` and
``full_matrices`` of the functions that take them. ``space_jax`` itself has no global state.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jax
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


@functools.cache
def _keywords(fn: Callable) -> frozenset[str]:
    return frozenset(inspect.signature(fn).parameters)


def solver_options(fn: Callable) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """The settings ``fn`` (a ``space_jax`` function) accepts: ``(static, extras)``.

    ``static`` holds ``solver``, ``n_iter`` and ``full_matrices``; ``extras`` holds a PRNG key
    for ``"lowrank"``, drawn from torch's global generator so that ``torch.manual_seed`` makes
    the sketch reproducible (as it does spacelearn's ``torch.svd_lowrank``).
    """
    accepted = _keywords(fn)
    wanted = {
        "solver": config.solver_mode,
        "n_iter": int(config.n_lowrank_iters),
        "full_matrices": bool(config.use_full_matrix),
    }
    static = {k: v for k, v in wanted.items() if k in accepted}
    extras = {}
    if config.solver_mode == "lowrank" and "key" in accepted:
        seed = int(torch.randint(0, 2**31 - 1, (), dtype=torch.int64))
        extras["key"] = jax.random.key(seed)
    return static, extras
