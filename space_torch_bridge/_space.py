"""Subspace discovery and sizing, as spacelearn's top-level functions, on ``space_jax``.

Shapes: ``Z`` is ``(B, D)`` latents with ``B >= 2``; ``Y`` is ``{q: (B, ...)}`` pooled targets
(flattened to ``(B, m_q)``; 1-D targets are ``(B, 1)``), whose key order is the quantity order.
The functions returning tensors are torch custom ops (``torch.compile`` traces them); the sizing
function :func:`solve_dims` returns Python ints from the data, so compiled code runs it eagerly
(a graph break; with ``fullgraph=True`` call it outside the compiled function).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import space_jax as _sj
from space_torch_bridge import _autograd
from space_torch_bridge._validate import check_k
from space_torch_bridge.settings import keywords, solver_options

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
                f"W, A, and V must contain identical keys; Space got {list(self.W)}, "
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


def _keys(Y) -> tuple:
    return tuple(Y) if isinstance(Y, dict) else ()


def _per_quantity(Y, leaf) -> tuple:
    """The output structure ``{q: leaf}`` over ``Y``'s keys (see ``_spec``)."""
    keys = _keys(Y)
    return ("dict", keys, (leaf,) * len(keys))


def principal_directions(
    z: torch.Tensor, pooled_targets: Tensors
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The first singular pair of each cross-covariance ``C_q = Zc.T @ Yc_q``.

    Args:
      z: latents ``(B, D)``.
      pooled_targets: ``{q: (B, ...)}`` targets.

    Returns:
      ``{q: (w (D,), v (m_q,))}``, each divided by ``(norm + 1e-8)``, detached (as in
      spacelearn).

    Differences from spacelearn: the sign is fixed (largest entry of ``w`` positive), so
    every solver gives the same pair; spacelearn's sign is whatever LAPACK returns.
    """
    static, seed = solver_options(_KEYWORDS["principal_directions"])
    return _autograd.call(
        _sj.principal_directions,
        (z, pooled_targets),
        names=("Z", "Y"),
        label="principal_directions",
        static=static,
        seed=seed,
        differentiable=False,
        output=_per_quantity(pooled_targets, ("tuple", ("T", "T"))),
    )


def subspaces(Z: torch.Tensor, pooled_global: Tensors, k: int | dict[str, int]) -> Tensors:
    """Orthonormal bases of the latent directions that covary most with each target.

    ``W_q`` is the first ``k_q`` left singular vectors of ``Zc.T @ Yc_q`` as rows,
    re-orthonormalised by a reduced QR.

    Args:
      Z: latents ``(B, D)``.
      pooled_global: ``{q: (B, ...)}`` targets.
      k: rows per basis: an int >= 1, or ``{q: int}`` with every quantity of
        ``pooled_global``. Where ``k_q`` exceeds the singular vectors available
        (``min(D, m_q)``), the basis has fewer rows, as spacelearn's slicing gives.

    Returns:
      ``{q: W_q (k_q, D)}``, differentiable (as spacelearn's).

    Differences from spacelearn: no ``print``; ``k`` must be an int or a dict of ints
    (``True`` or ``2.0`` raise ``TypeError``; spacelearn slices with them).
    """
    k = check_k(k, "subspaces")
    static, seed = solver_options(_KEYWORDS["subspaces"])
    return _autograd.call(
        _sj.subspaces,
        (Z, pooled_global),
        names=("Z", "Y"),
        label="subspaces",
        static={**static, "k": k},
        seed=seed,
        output=_per_quantity(pooled_global, "T"),
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


_autograd.register("solve_subspaces", _space_parts, loss=False, differentiable=False)
_autograd.register("solve_subspaces_grad", _space_parts_differentiable, loss=False)
_autograd.register(
    "principal_directions", _sj.principal_directions, loss=False, differentiable=False
)
_autograd.register("subspaces", _sj.subspaces, loss=False)
_KEYWORDS = {
    "principal_directions": keywords(_sj.principal_directions),
    "subspaces": keywords(_sj.subspaces),
    "solve_subspaces": keywords(_sj.solve_subspaces),
}


def solve_subspaces(Z: torch.Tensor, Y: Tensors, *, k: int | dict[str, int] = 32) -> Space:
    """Bases, decoders and target directions for every quantity, as a :class:`Space`.

    Args:
      Z: latents ``(B, D)``.
      Y: ``{q: (B, ...)}`` pooled targets.
      k: rows per basis (keyword only; default 32, as spacelearn): an int >= 1 or
        ``{q: int}``; see :func:`subspaces`.

    Returns:
      ``Space(W, A, V)`` with ``W[q]`` ``(k_q, D)`` (:func:`subspaces`), ``A[q]``
      ``(k_q, m_q)`` (:func:`space_torch_bridge.optim.fit_decoders`) and ``V[q]`` ``(m_q,)``
      (the target direction of :func:`principal_directions`). ``W`` is differentiable,
      ``A`` and ``V`` are detached, as in spacelearn. Without gradients (``torch.no_grad()``
      or no input requiring grad) the whole space comes from one SVD per quantity.

    Differences from spacelearn: no ``print``; ``k`` is checked as in :func:`subspaces`.
    """
    k = check_k(k, "solve_subspaces")
    tensors = [Z, *Y.values()] if isinstance(Y, dict) else [Z]
    wants_grad = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors
    )
    fn = _space_parts_differentiable if wants_grad else _space_parts
    static, seed = solver_options(_KEYWORDS["solve_subspaces"])
    per_q = _per_quantity(Y, "T")
    W, A, V = _autograd.call(
        fn,
        (Z, Y),
        names=("Z", "Y"),
        label="solve_subspaces",
        op_name="solve_subspaces_grad" if wants_grad else "solve_subspaces",
        differentiable=wants_grad,
        static={**static, "k": k},
        seed=seed,
        output=("tuple", (per_q, per_q, per_q)),
    )
    return Space(W, {q: a.detach() for q, a in A.items()}, {q: v.detach() for q, v in V.items()})


@torch.compiler.disable
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
    """Pooling resolution and subspace size per quantity, from the data.

    ``n_q`` from :func:`space_torch_bridge.optim.optimal_bins` (``max_bins``,
    ``bin_thresholds``, ``bin_default_threshold``, ``pool_per_quantity``), then each target
    pooled to ``n_q`` with ``pooling_mode``, then ``k_q`` from
    :func:`space_torch_bridge.optim.k_per_q` on the pooled targets (``k_thresholds``,
    ``k_default_threshold``, ``k_per_quantity``).

    Args:
      Y: ``{q: (B, ...)}`` unpooled targets (``(B, C, H, W)`` fields or ``(B, S)`` series).
      max_bins: the largest grid side (an int >= 2 is useful; >= 1 accepted).
      bin_thresholds, k_thresholds: variance fractions in ``(0, 1]``: a float, or
        ``{q: float}`` with the ``*_default_threshold`` fallback for missing quantities.
      pooling_mode: ``"avg"`` or ``"max"``.
      pool_per_quantity, k_per_quantity: one value per quantity (True) or the max for all.

    Returns:
      ``{q: (n_bins, k)}`` of Python ints.

    Host-level: it returns ints computed from the tensors, so ``torch.compile`` runs it
    eagerly. Differences from spacelearn: logs instead of printing; thresholds outside
    ``(0, 1]``, NaN/inf targets and unknown modes raise ``ValueError``.
    """
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
