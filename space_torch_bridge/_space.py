"""Subspace discovery and sizing, as spacelearn's top-level functions, on ``space_jax``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import space_jax as _sj
from space_torch_bridge import _autograd
from space_torch_bridge.settings import solver_options

__all__ = ["Space", "principal_directions", "solve_dims", "solve_subspaces", "subspaces"]

Tensors = dict[str, torch.Tensor]


@dataclass
class Space:
    """Subspace bases ``W``, decoders ``A`` and target directions ``V`` per quantity.

    As spacelearn's: ``space[q]`` is ``(W_q, A_q, V_q)``; ``keys()``, ``values()``, ``items()``,
    ``len``, ``in`` and iteration follow the quantity order.
    """

    W: dict[str, torch.Tensor]
    A: dict[str, torch.Tensor]
    V: dict[str, torch.Tensor]
    _names: list[str] = field(init=False)

    def __post_init__(self):
        if not (self.W.keys() == self.A.keys() == self.V.keys()):
            raise ValueError(
                f"Space: W, A and V must contain identical keys, got {list(self.W)}, "
                f"{list(self.A)}, {list(self.V)}"
            )
        self._names = list(self.W.keys())

    def __getitem__(self, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.W[key], self.A[key], self.V[key]

    def keys(self):
        return self._names

    def values(self):
        return [(self.W[k], self.A[k], self.V[k]) for k in self._names]

    def __len__(self):
        return len(self._names)

    def items(self):
        return [(k, (self.W[k], self.A[k], self.V[k])) for k in self._names]

    def __iter__(self):
        return iter(self._names)

    def __contains__(self, key):
        return key in self._names


def principal_directions(
    z: torch.Tensor, pooled_targets: Tensors
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{q: (w (D,), v (m_q,))}``: the first singular pair of ``Zc.T @ Yc_q`` (detached)."""
    static, extras = solver_options(_sj.principal_directions)
    return _autograd.call(
        _sj.principal_directions,
        (z, pooled_targets),
        names=("Z", "Y"),
        label="principal_directions",
        static=static,
        extras=extras,
        differentiable=False,
    )


def subspaces(Z: torch.Tensor, pooled_global: Tensors, k: int) -> Tensors:
    """``{q: W_q (k_q, D)}``: orthonormal bases of the latent directions covarying with ``Y_q``.

    ``k`` is an int or ``{q: int}``. Differentiable, as spacelearn's.
    """
    static, extras = solver_options(_sj.subspaces)
    return _autograd.call(
        _sj.subspaces,
        (Z, pooled_global),
        names=("Z", "Y"),
        label="subspaces",
        static={**static, "k": k},
        extras=extras,
    )


def _space_parts(Z, Y, **options):
    """``space_jax.solve_subspaces`` as plain dicts ``(W, A, V)``: one SVD per quantity."""
    space = _sj.solve_subspaces(Z, Y, **options)
    return space.W, space.A, space.V


def _space_parts_differentiable(Z, Y, *, k, **options):
    """The same through spacelearn's composition, so that ``W`` keeps its derivative
    (``space_jax.solve_subspaces`` treats the bases as fitted constants)."""
    W = _sj.subspaces(Z, Y, k, **options)
    A = _sj.fit_decoders(W, Z, Y)
    V = {q: v for q, (_, v) in _sj.principal_directions(Z, Y, **options).items()}
    return W, A, V


def solve_subspaces(Z: torch.Tensor, Y: Tensors, *, k: int | dict[str, int] = 32) -> Space:
    """Bases, decoders and target directions for every quantity, as a :class:`Space`.

    ``W[q]`` is ``(k_q, D)``, ``A[q]`` ``(k_q, m_q)`` and ``V[q]`` ``(m_q,)``. ``W`` is
    differentiable (``A`` and ``V`` are detached), as in spacelearn; without gradients the
    whole space comes from one SVD per quantity.
    """
    tensors = [Z, *Y.values()] if isinstance(Y, dict) else [Z]
    wants_grad = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors
    )
    fn = _space_parts_differentiable if wants_grad else _space_parts
    static, extras = solver_options(_sj.solve_subspaces)
    W, A, V = _autograd.call(
        fn,
        (Z, Y),
        names=("Z", "Y"),
        label="solve_subspaces",
        static={**static, "k": k},
        extras=extras,
    )
    return Space(W, {q: a.detach() for q, a in A.items()}, {q: v.detach() for q, v in V.items()})


def solve_dims(
    Y: Tensors,
    max_bins: int,
    bin_thresholds: float | dict[str, float],
    k_thresholds: float | dict[str, float],
    *,
    bin_default_threshold: float | None = None,
    k_default_threshold: float | None = None,
    pooling_mode: str = "avg",
    pool_per_quantity: bool = False,
    k_per_quantity: bool = False,
) -> dict[str, tuple[int, int]]:
    """``{q: (n_bins, k)}``: pooling resolution from ``optimal_bins``, then subspace size from
    ``k_per_q`` on the pooled targets."""
    return _autograd.host_call(
        _sj.solve_dims,
        (Y,),
        names=("Y",),
        label="solve_dims",
        static={
            "max_bins": max_bins,
            "bin_thresholds": bin_thresholds,
            "k_thresholds": k_thresholds,
            "bin_default_threshold": bin_default_threshold,
            "k_default_threshold": k_default_threshold,
            "pooling_mode": pooling_mode,
            "pool_per_quantity": pool_per_quantity,
            "k_per_quantity": k_per_quantity,
        },
    )
