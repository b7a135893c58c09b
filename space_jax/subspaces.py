"""Fitting subspaces and decoders from latents and targets.

For each quantity ``q`` the cross-covariance ``C_q = Zc.T @ Yc_q`` (``D x m_q``; all of them
from one product over the concatenated targets) is decomposed once; its leading left singular
vectors span the subspace ``W_q`` and its first right singular vector is the target direction
``V_q``. The decoder ``A_q`` is the minimum-norm least-squares map from the subspace coordinates
``S_q = Zc @ W_q.T`` to ``Yc_q``, from the normal equations
``A_q = (S_q.T S_q)^+ W_q C_q``: ``W_q C_q`` is a ``k x m`` product of statistics already
formed, and every ``S_q.T S_q`` comes from the coordinates of all quantities, one ``B x D x K``
product and one ``B x K x K`` product. No least squares over the ``B x k`` coordinates runs,
and the batch is read by three products in all. (The normal equations square the
coordinates' condition number; the bases are orthonormal and the latents' spectrum rarely spans
more than ``1e3``, so in float32 the decoders agree with a least-squares solve to about
``eps * cond(S)^2``.)

The latents are centered and divided by a power of two near their spread before any product
(exact, as in :mod:`space_jax.losses`), so latents near ``1e20`` do not overflow the statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp

from . import linalg
from ._checks import (
    check_keys,
    check_latents,
    check_positive_int,
    flatten_target,
    half_in_float32,
)
from ._spmd import batch_contract, batch_mean
from .linalg import Solver, full, left, pinv
from .losses import _scaled_center

__all__ = [
    "Space",
    "fit_decoders",
    "principal_directions",
    "solve_subspaces",
    "subspaces",
]

logger = logging.getLogger(__name__)

_EPS = 1e-8


@jax.tree_util.register_pytree_node_class
class Space(Mapping):
    """Subspaces, decoders and target directions per quantity (a pytree).

    ``space.W[q]`` is the basis ``(k_q, D)``, ``space.A[q]`` the decoder ``(k_q, m_q)`` and
    ``space.V[q]`` the target direction ``(m_q,)``. As a mapping, ``space[q]`` is the triple
    ``(W_q, A_q, V_q)``, and ``keys()``, ``values()``, ``items()``, ``len``, ``in`` and iteration
    follow the quantity order.
    """

    __slots__ = ("W", "A", "V")

    def __init__(self, W: Mapping, A: Mapping, V: Mapping):
        if not (set(W) == set(A) == set(V)):
            raise ValueError(
                f"Space: W, A and V must name the same quantities, got {list(W)}, {list(A)}, "
                f"{list(V)}"
            )
        self.W, self.A, self.V = dict(W), {q: A[q] for q in W}, {q: V[q] for q in W}

    def __getitem__(self, name: str) -> tuple[jax.Array, jax.Array, jax.Array]:
        if name not in self.W:
            raise KeyError(f"Space: no quantity {name!r}; quantities are {list(self.W)}")
        return self.W[name], self.A[name], self.V[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.W)

    def __len__(self) -> int:
        return len(self.W)

    def __contains__(self, name: object) -> bool:
        return name in self.W

    # Arrays have no truth value: compare by identity, not as mappings.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        shapes = {q: tuple(jnp.shape(w)) for q, w in self.W.items()}
        return f"Space(W shapes={shapes})"

    # The quantity names are static structure, so the quantity order survives jit and tree_map
    # (plain dict children would come back sorted by key).
    def tree_flatten(self):
        names = tuple(self.W)
        return tuple(tuple(d[q] for q in names) for d in (self.W, self.A, self.V)), names

    @classmethod
    def tree_unflatten(cls, names, children):
        obj = object.__new__(cls)
        obj.W, obj.A, obj.V = (dict(zip(names, c, strict=True)) for c in children)
        return obj


def _targets(Y: Mapping, batch: int) -> dict[str, jax.Array]:
    if not isinstance(Y, Mapping) or len(Y) == 0:
        raise ValueError("Y: expected a non-empty dict of per-quantity targets")
    return {q: flatten_target(y, batch, q) for q, y in Y.items()}


def _center(x: jax.Array) -> jax.Array:
    return x - batch_mean(x, keepdims=True)


def _resolve_k(k, names) -> dict[str, int]:
    if isinstance(k, Mapping):
        check_keys("Y", dict.fromkeys(names), "k", k)
        return {q: check_positive_int(k[q], f"k[{q!r}]") for q in names}
    k = check_positive_int(k, "k")
    return dict.fromkeys(names, k)


def _split_columns(x: jax.Array, sizes: list[int]) -> list[jax.Array]:
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    return [x[:, offsets[i] : offsets[i + 1]] for i in range(len(sizes))]


def _cross_covariances(Z, Y: Mapping) -> tuple[jax.Array, jax.Array, dict, dict[str, jax.Array]]:
    """``(Zs, scale, Yc, {q: Zs.T @ Yc_q})``: latents centered and divided by ``scale``
    (:func:`space_jax.losses._scaled_center`), the centered targets ``{q: (B, m_q)}`` and the
    cross-covariances of all quantities from one product (``C_q / scale``)."""
    Z = check_latents(Z)
    targets = _targets(Y, Z.shape[0])
    zs, scale = _scaled_center(Z)
    yc = {q: _center(y) for q, y in targets.items()}
    c_all = batch_contract(zs, jnp.concatenate(list(yc.values()), axis=1))
    sizes = [y.shape[1] for y in yc.values()]
    c = dict(zip(yc, _split_columns(c_all, sizes), strict=True))
    return zs, scale, yc, c


def _normal_decoders(
    bases: Mapping, normal_all: jax.Array, rhs: Mapping, scale=1.0
) -> dict[str, jax.Array]:
    """``A_q = pinv(N_q) rhs_q / scale`` from the Gram matrix ``normal_all`` (``K x K``) of the
    coordinates of all quantities (``S.T S``, of latents divided by ``scale``), whose diagonal
    blocks are the ``N_q = S_q.T S_q``, and ``rhs_q = S_q.T Yc_q`` (``= W_q C_q``).

    Zero (padding) rows of a basis give zero coordinates, which the pseudo-inverse drops, and
    zero rows of ``A_q``.
    """
    names = list(bases)
    sizes = [bases[q].shape[0] for q in names]
    out, start = {}, 0
    for q, k in zip(names, sizes, strict=True):
        normal = normal_all[start : start + k, start : start + k]
        a = pinv((normal + normal.T) / 2, hermitian=True) @ rhs[q] * (1.0 / scale)
        out[q] = jax.lax.stop_gradient(a)
        start += k
    return out


def _decoders(W: Mapping, zs: jax.Array, scale: jax.Array, yc: Mapping) -> dict[str, jax.Array]:
    """Minimum-norm least squares ``Zc @ W_q.T @ A_q ~ Yc_q`` (normal equations) from the
    scaled centered latents: ``S.T @ [S, Yc]`` in one product over the coordinates."""
    bases = {q: jnp.asarray(w) for q, w in W.items()}
    names = list(bases)
    coords = zs @ jnp.concatenate([bases[q] for q in names], axis=0).T
    rhs_all = batch_contract(coords, jnp.concatenate([yc[q] for q in names], axis=1))
    sizes = [bases[q].shape[0] for q in names]
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    m_sizes = [yc[q].shape[1] for q in names]
    rhs = {}
    for i, (q, block) in enumerate(zip(names, _split_columns(rhs_all, m_sizes), strict=True)):
        rhs[q] = block[offsets[i] : offsets[i + 1]]
    return _normal_decoders(bases, batch_contract(coords, coords), rhs, scale)


def _leading_pair(u: jax.Array, vh: jax.Array) -> tuple[jax.Array, jax.Array]:
    """First singular pair, normalised as the reference and with a fixed sign.

    The sign of a singular pair is arbitrary; making the largest entry of ``w`` positive keeps
    results identical across back ends (``w v^T`` is unchanged).
    """
    w, v = u[:, 0], vh[0, :]
    sign = jnp.where(w[jnp.argmax(jnp.abs(w))] < 0, -1.0, 1.0).astype(w.dtype)
    w, v = sign * w, sign * v
    return w / (jnp.linalg.norm(w) + _EPS), v / (jnp.linalg.norm(v) + _EPS)


def _basis(u: jax.Array, k: int) -> jax.Array:
    """First ``k`` columns of ``u`` (fewer if it has fewer), re-orthonormalised, as rows."""
    q, _ = linalg.qr(u[:, :k])
    return q.T


@half_in_float32
def principal_directions(
    Z: jax.typing.ArrayLike,
    Y: Mapping,
    *,
    solver: Solver = "auto",
    full_matrices: bool = False,
    n_iter: int = 2,
    key: jax.Array | None = None,
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Rank-1 latent/target direction pairs per quantity.

    ``w``, ``v`` are the first left and right singular vectors of ``C_q = Zc.T @ Yc_q``, each
    divided by ``(norm + 1e-8)``: the pair maximising the explained covariance.

    Args:
      Z: latents ``(B, D)``.
      Y: ``{q: (B, ...)}`` targets (flattened to ``(B, m_q)``).
      solver, full_matrices, n_iter, key: SVD options, as :func:`subspaces` (the leading
        pair does not depend on them, up to the accuracy of ``"lowrank"``).

    Returns:
      ``{q: (w (D,), v (m_q,))}``, not differentiated (as the reference, which detaches).
    """
    _, _, _, c = _cross_covariances(Z, Y)
    out = {}
    for q, c_q in c.items():
        u, _, vh = full(c_q, solver=solver, full_matrices=full_matrices, n_iter=n_iter, key=key)
        out[q] = jax.lax.stop_gradient(_leading_pair(u, vh))
    return out


@half_in_float32
def subspaces(
    Z: jax.typing.ArrayLike,
    Y: Mapping,
    k: int | Mapping[str, int],
    *,
    solver: Solver = "auto",
    full_matrices: bool = False,
    n_iter: int = 2,
    key: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Orthonormal bases of the latent directions that covary most with each target.

    Args:
      Z: latents ``(B, D)``.
      Y: ``{q: (B, ...)}`` targets.
      k: rows per basis, an int or ``{q: int}`` (static). When ``k_q`` exceeds the available
        singular vectors (``min(D, m_q)``, or ``D`` with ``full_matrices``), the basis has that
        many rows instead.
      solver: SVD solver (static); ``full_matrices`` completes ``U`` to ``D`` columns (``"svd"``
        route); ``n_iter`` and ``key`` configure ``"lowrank"``.

    Returns:
      ``{q: W_q (k_q, D)}`` with orthonormal rows, differentiable w.r.t. ``Z`` and ``Y``.
    """
    _, _, _, c = _cross_covariances(Z, Y)
    ks = _resolve_k(k, list(c))
    logger.debug("estimating subspaces for %s", ks)
    options = dict(solver=solver, full_matrices=full_matrices, n_iter=n_iter, key=key)
    return {q: _basis(left(c_q, **options)[0], ks[q]) for q, c_q in c.items()}


@half_in_float32
def fit_decoders(W: Mapping, Z: jax.typing.ArrayLike, Y: Mapping) -> dict[str, jax.Array]:
    """Least-squares decoders from subspace coordinates to centered targets.

    Args:
      W: ``{q: (k_q, D)}`` bases.
      Z: latents ``(B, D)``.
      Y: ``{q: (B, ...)}`` targets (at least the quantities of ``W``).

    Returns:
      ``{q: A_q (k_q, m_q)}``, the minimum-norm solution of ``Zc @ W_q.T @ A_q ~ Yc_q``; zero
      (padding) rows of ``W_q`` get zero rows in ``A_q``.
    """
    Z = check_latents(Z)
    if not isinstance(W, Mapping) or len(W) == 0:
        raise ValueError("W: expected a non-empty dict of per-quantity bases")
    missing = [q for q in W if q not in Y]
    if missing:
        raise ValueError(f"Y: no targets for the quantities {missing} of W")
    for q, w in W.items():
        w = jnp.asarray(w)
        if w.ndim != 2 or w.shape[1] != Z.shape[1]:
            raise ValueError(f"W[{q!r}]: expected shape (k, D={Z.shape[1]}), got {w.shape}")
    zs, scale = _scaled_center(Z)
    yc = {q: _center(flatten_target(Y[q], Z.shape[0], q)) for q in W}
    return _decoders(W, zs, scale, yc)


@half_in_float32
def solve_subspaces(
    Z: jax.typing.ArrayLike,
    Y: Mapping,
    *,
    k: int | Mapping[str, int] = 32,
    solver: Solver = "auto",
    full_matrices: bool = False,
    n_iter: int = 2,
    key: jax.Array | None = None,
    active_k: jax.typing.ArrayLike | Mapping | None = None,
) -> Space:
    """Subspaces, decoders and target directions in one pass (one SVD per quantity).

    Args:
      Z: latents ``(B, D)``.
      Y: ``{q: (B, ...)}`` targets.
      k: rows per basis, an int or ``{q: int}`` (static).
      solver, full_matrices, n_iter, key: SVD options, as :func:`subspaces`.
      active_k: optional traced number of active rows (an int array, or ``{q: int array}``).
        Rows from ``active_k`` on are zero in ``W`` and ``A``, which the losses treat as the
        unpadded basis, so a sweep over subspace sizes can ``vmap`` with a fixed ``k``.

    Returns:
      A :class:`Space`: ``W[q]`` ``(k_q, D)``, ``A[q]`` ``(k_q, m_q)``, ``V[q]`` ``(m_q,)``, all
      fitted constants (not differentiated; use :func:`subspaces` for a differentiable basis).
    """
    zs, scale, _, c = _cross_covariances(Z, Y)
    ks = _resolve_k(k, list(c))
    W, V = {}, {}
    for q, c_q in c.items():
        u, _, vh = full(c_q, solver=solver, full_matrices=full_matrices, n_iter=n_iter, key=key)
        W[q] = jax.lax.stop_gradient(_basis(u, ks[q]))
        V[q] = jax.lax.stop_gradient(_leading_pair(u, vh)[1])
    W = _mask_rows(W, active_k)
    coords = zs @ jnp.concatenate(list(W.values()), axis=0).T
    rhs = {q: W[q] @ c[q] for q in W}
    A = _normal_decoders(W, batch_contract(coords, coords), rhs, scale)
    return Space(W, _mask_rows(A, active_k), V)


def _mask_rows(X: Mapping, active_k) -> dict:
    """Rows from ``active_k`` on (a traced int, or ``{q: int}``) set to zero; ``X`` itself for
    ``active_k=None``."""
    if active_k is None:
        return dict(X)
    if isinstance(active_k, Mapping):
        check_keys("Y", X, "active_k", active_k)
    out = {}
    for q, x in X.items():
        limit = active_k[q] if isinstance(active_k, Mapping) else active_k
        out[q] = jnp.where(jnp.arange(x.shape[0])[:, None] < limit, x, 0.0).astype(x.dtype)
    return out
