"""SVD back ends, as spacelearn's ``spacelearn.util``: ``space_jax``'s, chosen by ``config``.

``config.solver_mode`` picks the method at every call: ``"auto"`` (exact; the cheapest route for
the shape, e.g. the eigendecomposition of the small Gram matrix of a long matrix), ``"svd"``,
``"eigen"`` or ``"lowrank"`` (randomised, rank 6 as ``torch.svd_lowrank``'s default ``q``, with
``config.n_lowrank_iters`` power iterations, seeded from torch's global generator).
``config.use_full_matrix`` gives ``"svd"`` square factors. Each function is a torch custom op
and differentiable.

Differences from spacelearn: every mode returns reduced factors (spacelearn's ``"eigen"``
returns square ones); ``"auto"`` never switches to the randomised sketch (spacelearn's does
above 100,000 elements).
"""

from __future__ import annotations

import torch

import space_jax as _sj
from space_torch_bridge import _autograd
from space_torch_bridge.settings import keywords, solver_options

__all__ = ["left", "right", "full", "singular_values"]

_FUNCTIONS = {
    "left": (_sj.left, ("tuple", ("T", "T"))),
    "right": (_sj.right, ("tuple", ("T", "T"))),
    "full": (_sj.full, ("tuple", ("T", "T", "T"))),
    "singular_values": (_sj.singular_values, "T"),
}
for _name, (_fn, _) in _FUNCTIONS.items():
    _autograd.register(_name, _fn, loss=False)
_KEYWORDS = {name: keywords(fn) for name, (fn, _) in _FUNCTIONS.items()}


def _svd(label: str, A: torch.Tensor):
    fn, output = _FUNCTIONS[label]
    static, seed = solver_options(_KEYWORDS[label])
    return _autograd.call(
        fn, (A,), names=("A",), label=label, static=static, seed=seed, output=output
    )


def left(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and singular values of ``A (H, W)``.

    Returns:
      ``(U (H, r), S (r,))`` with ``r = min(H, W)`` (rank 6 for ``"lowrank"``), ``S``
      descending.
    """
    return _svd("left", A)


def right(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right singular vectors (as rows) and singular values of ``A (H, W)``.

    Returns:
      ``(Vh (r, W), S (r,))``, ``S`` descending.
    """
    return _svd("right", A)


def full(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The singular value decomposition of ``A (H, W)``.

    Returns:
      ``(U (H, r), S (r,), Vh (r, W))`` with ``A = U @ diag(S) @ Vh`` (square ``U`` and
      ``Vh`` with ``config.use_full_matrix`` and ``"svd"``).
    """
    return _svd("full", A)


def singular_values(A: torch.Tensor) -> torch.Tensor:
    """Singular values of ``A (H, W)``, descending, ``(r,)``."""
    return _svd("singular_values", A)
