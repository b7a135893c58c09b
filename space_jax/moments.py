"""Streaming second-order statistics: SPACE on more data than fits in memory.

Every quantity SPACE fits is a function of the sample means and the centered co-moment
matrices ``Zc.T @ Zc``, ``Zc.T @ Yc_q`` and ``Yc_q.T @ Yc_q`` (SPEC section 3). A
:class:`Moments` holds them for one chunk of data; :func:`merge_moments` combines two chunks with
the parallel co-moment update of Chan, Golub and LeVeque (1979)::

    n = n_a + n_b,    delta = mean_b - mean_a,    mean = mean_a + delta * n_b / n
    C = C_a + C_b + (n_a * n_b / n) * outer(delta_z, delta_y)

Each chunk is centered on its own mean before any product is formed, so no sum of raw products
(which cancels catastrophically for data far from the origin) ever appears: the update is exact
in exact arithmetic and stable in float32. Merging is associative and commutative up to
rounding, so chunks can be folded in any order, in a tree, inside ``jax.lax.scan``, or reduced
across devices.

Solving and sizing from moments is in :mod:`space_jax.moment_solvers`, losses from moments in
:mod:`space_jax.moment_losses`, and :func:`~space_jax.stream_moments` (folding an iterable of
host batches) in :mod:`space_jax.streaming`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ._checks import (
    HALF_DTYPES,
    check_finite,
    check_keys,
    check_latents,
    flatten_target,
)
from ._spmd import batch_contract, batch_first, batch_gram, batch_mean
from .linalg import gram

__all__ = ["Moments", "merge_moments", "moments"]


@jax.tree_util.register_pytree_node_class
class Moments:
    """Sample count, means and centered co-moments of latents and targets (a pytree).

    Attributes:
      count: number of samples, a scalar in the statistics' floating dtype (it never overflows;
        exact up to ``2**24`` samples in float32, relative error ``6e-8`` beyond).
      z_mean: mean latent ``(D,)``.
      zz: ``Zc.T @ Zc`` ``(D, D)`` (sums over samples, not divided by the count).
      y_mean: ``{q: (m_q,)}`` mean targets, flattened as elsewhere (1-D targets have ``m_q = 1``).
      zy: ``{q: Zc.T @ Yc_q (D, m_q)}``.
      yy: ``{q: Yc_q.T @ Yc_q (m_q, m_q)}``.
      target_shapes: ``{q: shape}``, the per-sample shape of each target before flattening
        (static).

    The quantity names and target shapes are static (part of the tree structure), so the
    quantity order survives ``jax.jit`` and ``jax.lax.scan``; the arrays are the leaves. A
    ``Moments`` with ``count == 0`` (for example ``jax.tree.map(jnp.zeros_like, m)``) is the
    identity of :func:`merge_moments`.
    """

    __slots__ = ("count", "z_mean", "zz", "y_mean", "zy", "yy", "target_shapes")

    def __init__(
        self,
        count: jax.typing.ArrayLike,
        z_mean: jax.typing.ArrayLike,
        zz: jax.typing.ArrayLike,
        y_mean: Mapping,
        zy: Mapping,
        yy: Mapping,
        target_shapes: Mapping[str, tuple[int, ...]],
    ):
        names = list(target_shapes)
        for field, value in (("y_mean", y_mean), ("zy", zy), ("yy", yy)):
            check_keys("target_shapes", target_shapes, field, value)
        self.count, self.z_mean, self.zz = count, z_mean, zz
        self.y_mean = {q: y_mean[q] for q in names}
        self.zy = {q: zy[q] for q in names}
        self.yy = {q: yy[q] for q in names}
        self.target_shapes = {q: tuple(target_shapes[q]) for q in names}

    @property
    def names(self) -> tuple[str, ...]:
        """The quantities, in order."""
        return tuple(self.target_shapes)

    @property
    def latent_dim(self) -> int:
        """``D``."""
        return jnp.shape(self.z_mean)[-1]

    def __repr__(self) -> str:
        dims = {q: jnp.shape(v)[-1] for q, v in self.y_mean.items()}
        return f"Moments(count={self.count}, D={self.latent_dim}, m={dims})"

    def tree_flatten(self):
        names = self.names
        children = (
            self.count,
            self.z_mean,
            self.zz,
            tuple(self.y_mean[q] for q in names),
            tuple(self.zy[q] for q in names),
            tuple(self.yy[q] for q in names),
        )
        return children, tuple(self.target_shapes.items())

    @classmethod
    def tree_unflatten(cls, aux, children):
        # No checks here: transformations rebuild trees with placeholder leaves.
        obj = object.__new__(cls)
        count, z_mean, zz, y_mean, zy, yy = children
        names = [q for q, _ in aux]
        obj.count, obj.z_mean, obj.zz = count, z_mean, zz
        obj.y_mean = dict(zip(names, y_mean, strict=True))
        obj.zy = dict(zip(names, zy, strict=True))
        obj.yy = dict(zip(names, yy, strict=True))
        obj.target_shapes = dict(aux)
        return obj


# --- one batch ------------------------------------------------------------------------------


def _shifted_center(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and centered rows, with the mean accumulated relative to the first row.

    Summing ``x - x[0]`` instead of ``x`` keeps the accumulated values near the spread of the
    data rather than near its offset, so the mean of data far from the origin stays accurate.
    """
    shift = batch_first(x)
    mean = shift + batch_mean(x - shift)
    return mean, x - mean


def _split(x: jax.Array, sizes: list[int], axis: int) -> list[jax.Array]:
    offsets = [sum(sizes[:i]) for i in range(1, len(sizes))]
    return jnp.split(x, offsets, axis=axis)


def moments(Z: jax.typing.ArrayLike, Y: Mapping) -> Moments:
    """Count, means and centered co-moments of one chunk of latents and targets.

    All quantities share the products: the centered targets are stacked by columns, so the
    cost is one ``B x D x D``, one ``B x D x M`` and one ``B x M x M`` product
    (``M = sum_q m_q``).

    Args:
      Z: latents ``(B, D)``, ``B >= 1``.
      Y: ``{q: (B, ...)}`` targets (1-D targets become ``(B, 1)``, more dims are flattened).

    Returns:
      A :class:`Moments`. Eagerly, NaN or infinity in the inputs raise ``ValueError``; under
      ``jax.jit`` they propagate into the statistics (:func:`stream_moments` checks them).
      Half-precision inputs (float16, bfloat16) are accumulated, and returned, in float32.
    """
    Z = _accumulator(check_latents(Z, min_batch=1))
    if not isinstance(Y, Mapping) or len(Y) == 0:
        raise ValueError("Y: expected a non-empty dict of per-quantity targets")
    batch = Z.shape[0]
    targets = {q: _accumulator(flatten_target(y, batch, q)) for q, y in Y.items()}
    check_finite(Z, "Z")
    for q, y in targets.items():
        check_finite(y, f"Y[{q!r}]")
    shapes = tuple((q, tuple(jnp.shape(Y[q])[1:])) for q in targets)
    return _moments_of_chunk(Z, tuple(targets.values()), shapes)


def _accumulator(x: jax.Array) -> jax.Array:
    """Half-precision inputs are accumulated in float32 (their sums leave float16's range)."""
    return x.astype(jnp.float32) if jnp.dtype(x.dtype) in HALF_DTYPES else x


@functools.partial(jax.jit, static_argnames=("shapes",))
def _moments_of_chunk(Z: jax.Array, targets: tuple, shapes: tuple) -> Moments:
    # One compiled call per chunk shape, also when called eagerly.
    names = [q for q, _ in shapes]
    sizes = [y.shape[1] for y in targets]
    dtype = jnp.result_type(Z, *targets)
    z_mean, zc = _shifted_center(Z.astype(dtype))
    y_mean, yc = _shifted_center(jnp.concatenate(targets, axis=1).astype(dtype))
    zy = batch_contract(zc, yc)
    yy = batch_gram(yc)
    y_means = _split(y_mean, sizes, axis=0)
    zys = _split(zy, sizes, axis=1)
    yys = [_split(rows, sizes, axis=1)[i] for i, rows in enumerate(_split(yy, sizes, axis=0))]
    return Moments(
        count=jnp.asarray(Z.shape[0], dtype),
        z_mean=z_mean,
        zz=gram(zc),
        y_mean=dict(zip(names, y_means, strict=True)),
        zy=dict(zip(names, zys, strict=True)),
        yy=dict(zip(names, yys, strict=True)),
        target_shapes=dict(shapes),
    )


# --- merging --------------------------------------------------------------------------------


def _check_moments(m, name: str) -> Moments:
    if not isinstance(m, Moments):
        raise TypeError(f"{name}: expected a Moments (from space_jax.moments), got {type(m)}")
    return m


def _check_compatible(a: Moments, b: Moments) -> None:
    if set(a.names) != set(b.names):
        missing = [q for q in a.names if q not in b.names]
        extra = [q for q in b.names if q not in a.names]
        raise ValueError(
            f"b: moments of different quantities cannot be merged: a has {list(a.names)}, "
            f"b is missing {missing} and has unexpected {extra}"
        )
    if a.latent_dim != b.latent_dim:
        raise ValueError(
            f"b: moments of different latent sizes cannot be merged: a has D={a.latent_dim}, "
            f"b has D={b.latent_dim}"
        )
    for q in a.names:
        if a.target_shapes[q] != b.target_shapes[q]:
            raise ValueError(
                f"b: quantity {q!r} has per-sample shape {b.target_shapes[q]} in b but "
                f"{a.target_shapes[q]} in a"
            )


def _check_count(m: Moments, name: str) -> None:
    """A concrete count must be a finite number >= 0 (a traced one is the caller's)."""
    if isinstance(m.count, jax.core.Tracer):
        return
    count = float(jnp.asarray(m.count))
    if not count >= 0 or not math.isfinite(count):
        raise ValueError(f"{name}: count must be a finite number >= 0, got {m.count}")


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Moments of the union of two chunks (the parallel co-moment update).

    ``C = C_a + C_b + (n_a n_b / n) * outer(mean_b - mean_a, mean_b - mean_a)`` for every
    co-moment, and ``mean = mean_a + (mean_b - mean_a) * n_b / n``. Exact in exact arithmetic,
    order-independent up to rounding, and never forms sums of raw products. Chunks with a count
    of 0 are the identity. Jittable; the quantity checks run at trace time.

    Args:
      a: moments of the first chunk.
      b: moments of the second chunk, over the same quantities (in any order), target shapes
        and latent size.

    Returns:
      The merged :class:`Moments`, with ``a``'s quantity order.
    """
    a, b = _check_moments(a, "a"), _check_moments(b, "b")
    _check_compatible(a, b)
    _check_count(a, "a")
    _check_count(b, "b")
    if b.names != a.names:
        b = Moments(b.count, b.z_mean, b.zz, b.y_mean, b.zy, b.yy, a.target_shapes)
    return _merge(a, b)


@jax.jit
def _merge(a: Moments, b: Moments) -> Moments:
    n = a.count + b.count
    frac_b = b.count / jnp.where(n > 0, n, 1)
    weight = a.count * frac_b  # n_a n_b / n, 0 when either chunk is empty
    dz = b.z_mean - a.z_mean
    dy = {q: b.y_mean[q] - a.y_mean[q] for q in a.names}
    return Moments(
        count=n,
        z_mean=a.z_mean + frac_b * dz,
        zz=a.zz + b.zz + weight * jnp.outer(dz, dz),
        y_mean={q: a.y_mean[q] + frac_b * dy[q] for q in a.names},
        zy={q: a.zy[q] + b.zy[q] + weight * jnp.outer(dz, dy[q]) for q in a.names},
        yy={q: a.yy[q] + b.yy[q] + weight * jnp.outer(dy[q], dy[q]) for q in a.names},
        target_shapes=a.target_shapes,
    )


def _require_samples(m: Moments, minimum: int, what: str) -> None:
    """Eager count check (skipped when the count is traced)."""
    if isinstance(m.count, jax.core.Tracer):
        return
    if float(m.count) < minimum:
        raise ValueError(f"m: {what} needs at least {minimum} samples, got count={m.count}")
