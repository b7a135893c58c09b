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

:func:`solve_subspaces_from_moments` turns merged moments into the :class:`~space_jax.Space`
that :func:`~space_jax.solve_subspaces` returns on the concatenated data, and
:func:`k_per_q_from_moments` / :func:`solve_dims_from_moments` size the subspaces from the
target moments. :func:`stream_moments` folds an iterable of host batches.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import (
    HALF_DTYPES,
    check_finite,
    check_keys,
    check_latents,
    check_positive_int,
    flatten_target,
    half_in_float32,
)
from ._spmd import batch_contract, batch_first, batch_gram, batch_mean
from .dims import (
    _avg_pool_matrix,
    _thresholds,
    bins_for_modes,
    explained_rank_from_gram,
    normalised_gram,
)
from .linalg import Solver, full, gram
from .subspaces import Space, _basis, _leading_pair, _mask_rows, _normal_decoders, _resolve_k

__all__ = [
    "Moments",
    "k_per_q_from_moments",
    "merge_moments",
    "moments",
    "solve_dims_from_moments",
    "solve_subspaces_from_moments",
    "stream_moments",
]

logger = logging.getLogger(__name__)

_EPS = 1e-8  # spacelearn's stabiliser of the explained-variance rule (as space_jax.dims)


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


# --- solving --------------------------------------------------------------------------------


def _require_samples(m: Moments, minimum: int, what: str) -> None:
    """Eager count check (skipped when the count is traced)."""
    if isinstance(m.count, jax.core.Tracer):
        return
    if float(m.count) < minimum:
        raise ValueError(f"m: {what} needs at least {minimum} samples, got count={m.count}")


@half_in_float32
def solve_subspaces_from_moments(
    m: Moments,
    k: int | Mapping[str, int] = 32,
    *,
    solver: Solver = "auto",
    active_k: jax.typing.ArrayLike | Mapping | None = None,
) -> Space:
    """Subspaces, decoders and target directions from merged moments.

    Equals :func:`~space_jax.solve_subspaces` on the concatenated data, by the same algebra:
    ``W_q`` and ``V_q`` come from the SVD of ``Zc.T @ Yc_q`` and the decoder is the
    minimum-norm solution of the normal equations ``(W_q Czz W_q.T) A_q = W_q Czy_q`` (a
    ``k x k`` pseudo-inverse), the least-squares decoder of ``Zc @ W_q.T @ A_q ~ Yc_q``.

    Args:
      m: :class:`Moments` of at least 2 samples.
      k: rows per basis, an int or ``{q: int}`` (static).
      solver: SVD solver for ``Zc.T @ Yc_q`` (static).
      active_k: optional traced number of active rows (an int array, or ``{q: int array}``),
        as :func:`~space_jax.solve_subspaces`: rows from ``active_k`` on are zero in ``W`` and
        ``A``, so a sweep over subspace sizes can ``vmap`` with a fixed ``k``.

    Returns:
      A :class:`~space_jax.Space`: ``W[q]`` ``(k_q, D)``, ``A[q]`` ``(k_q, m_q)``,
      ``V[q]`` ``(m_q,)``, in ``m``'s quantity order.
    """
    m = _check_moments(m, "m")
    _require_samples(m, 2, "centering")
    ks = _resolve_k(k, m.names)
    W, V = {}, {}
    for q in m.names:
        u, _, vh = full(m.zy[q], solver=solver)
        W[q] = jax.lax.stop_gradient(_basis(u, ks[q]))
        V[q] = jax.lax.stop_gradient(_leading_pair(u, vh)[1])
    W = _mask_rows(W, active_k)
    w_all = jnp.concatenate(list(W.values()), axis=0)
    A = _normal_decoders(W, w_all @ m.zz @ w_all.T, {q: W[q] @ m.zy[q] for q in W})
    A = {q: jax.lax.stop_gradient(a) for q, a in _mask_rows(A, active_k).items()}
    return Space(W, A, V)


# --- sizing ---------------------------------------------------------------------------------


_explained_rank_of_gram_jit = jax.jit(explained_rank_from_gram)


def _host_moments(m, name: str = "m") -> Moments:
    m = _check_moments(m, name)
    _require_samples(m, 2, "sizing")
    for q in m.names:
        check_finite(m.yy[q], f"{name}.yy[{q!r}]")
    return m


def _rank(g: jax.Array, t: float) -> int:
    g = normalised_gram(g)  # the rule of k_per_q on the data: scale-free, no overflow
    return int(_explained_rank_of_gram_jit(g, jnp.asarray(t, g.dtype)))


def k_per_q_from_moments(
    m: Moments,
    threshold: float | Mapping[str, float] = 0.90,
    *,
    default_threshold: float | None = None,
    per_quantity: bool = True,
) -> int | dict[str, int]:
    """:func:`~space_jax.k_per_q` from target moments instead of the targets.

    The spectrum of the centered targets is the eigenvalues of ``Yc_q.T @ Yc_q``, so the result
    equals ``k_per_q`` on the concatenated (pooled) targets.

    Args:
      m: :class:`Moments` of at least 2 samples.
      threshold, default_threshold, per_quantity: as :func:`~space_jax.k_per_q`.

    Returns:
      ``{q: int}`` or the largest ``k_q``.
    """
    m = _host_moments(m)
    names = dict.fromkeys(m.names)
    ts = _thresholds(names, threshold, default_threshold, 0.90, "threshold")
    ks = {q: _rank(m.yy[q], ts[q]) for q in m.names}
    logger.info("subspace sizes from moments: %s", ks)
    return ks if per_quantity else max(ks.values())


def solve_dims_from_moments(
    m: Moments,
    max_bins: int,
    bin_thresholds: float | Mapping[str, float],
    k_thresholds: float | Mapping[str, float],
    *,
    bin_default_threshold: float | None = None,
    k_default_threshold: float | None = None,
    pooling_mode: str = "avg",
    pool_per_quantity: bool = False,
    k_per_quantity: bool = False,
) -> dict[str, tuple[int, int]]:
    """:func:`~space_jax.solve_dims` from target moments instead of the targets.

    Average pooling is linear, ``pooled(Yc) = Yc @ P``, so the pooled targets' moments are
    ``P.T @ (Yc.T @ Yc) @ P`` and the result equals ``solve_dims`` on the concatenated targets.
    Max pooling is not linear and cannot be computed from moments.

    Args:
      m: :class:`Moments` of at least 2 samples whose targets are ``(S,)`` series or
        ``(C, H, W)`` fields per sample.
      max_bins, bin_thresholds, k_thresholds, bin_default_threshold, k_default_threshold,
        pool_per_quantity, k_per_quantity: as :func:`~space_jax.solve_dims`.
      pooling_mode: must be ``"avg"``.

    Returns:
      ``{q: (n_bins, k)}``.
    """
    if pooling_mode != "avg":
        raise ValueError(
            f"pooling_mode: only 'avg' pooling can be sized from moments (it is linear), got "
            f"{pooling_mode!r}; use solve_dims on the targets for max pooling"
        )
    max_bins = check_positive_int(max_bins, "max_bins")
    m = _host_moments(m)
    names = dict.fromkeys(m.names)
    bin_ts = _thresholds(names, bin_thresholds, bin_default_threshold, 0.95, "bin_thresholds")
    bins = {q: int(bins_for_modes(_rank(m.yy[q], bin_ts[q]), max_bins)) for q in m.names}
    if not pool_per_quantity:
        bins = dict.fromkeys(m.names, max(bins.values()))
    k_ts = _thresholds(names, k_thresholds, k_default_threshold, 0.90, "k_thresholds")
    ks = {}
    for q in m.names:
        p = _avg_pool_matrix(m.target_shapes[q], bins[q], m.yy[q].dtype, f"m (quantity {q!r})")
        ks[q] = _rank(p.T @ m.yy[q] @ p, k_ts[q])
    if not k_per_quantity:
        ks = dict.fromkeys(m.names, max(ks.values()))
    logger.info("dimensions from moments: %s", {q: (bins[q], ks[q]) for q in m.names})
    return {q: (bins[q], ks[q]) for q in m.names}


# --- streaming ------------------------------------------------------------------------------


def _all_finite(m: Moments) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(m)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _batch_moments(Z, ys: tuple, names: tuple[str, ...]) -> Moments:
    return moments(Z, dict(zip(names, ys, strict=True)))


@functools.partial(jax.jit, static_argnames=("names",))
def _start(Z, ys, names):
    batch = _batch_moments(Z, ys, names)
    return batch, _all_finite(batch)


@functools.partial(jax.jit, static_argnames=("names",))
def _fold(acc, Z, ys, names):
    batch = _batch_moments(Z, ys, names)
    return merge_moments(acc, batch), _all_finite(batch)


def _unpack(batch, index: int) -> tuple:
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise TypeError(f"batches[{index}]: expected a pair (Z, Y), got {type(batch)}")
    Z, Y = batch
    if not isinstance(Y, Mapping) or len(Y) == 0:
        raise ValueError(f"batches[{index}]: Y must be a non-empty dict of per-quantity targets")
    return Z, tuple(Y.values()), tuple(Y)


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("stream_moments(progress=True) needs tqdm: pip install tqdm") from None
    return tqdm(unit="sample", unit_scale=True, desc="moments")


def _global_batch(sharding, Z, ys: tuple, index: int) -> tuple:
    """This process's part of a batch, as a global array laid out by ``sharding``."""
    try:
        return tuple(
            jax.make_array_from_process_local_data(sharding, np.asarray(x)) for x in (Z, *ys)
        )
    except ValueError as e:
        raise ValueError(
            f"batches[{index}]: this process's {np.shape(Z)[0]} samples cannot be laid out "
            f"by sharding={sharding} (the batch must split evenly over the devices of its "
            f"batch axis; drop or pad the last batch): {e}"
        ) from e


def stream_moments(
    batches: Iterable,
    *,
    progress: bool = False,
    initial: Moments | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> Moments:
    """Folds an iterable of host batches into one :class:`Moments`.

    Each batch is reduced to its moments and merged into the running total by one jitted call
    (compiled once per batch shape), so memory stays at one batch plus ``O(D**2 + D M + M**2)``
    whatever the number of samples. Dispatch is asynchronous: the next batch is produced while
    the previous one is reduced.

    Args:
      batches: an iterable (generator, data loader) of ``(Z, Y)`` pairs: latents ``(B, D)``
        with ``B >= 1`` and ``{q: (B, ...)}`` targets, NumPy or JAX arrays.
      progress: show a tqdm progress bar counting samples.
      initial: moments to continue from (for example a previous epoch or data set).
      sharding: lay each batch out over devices, for example
        ``NamedSharding(mesh, P("batch"))``. Every batch is then this process's part of a
        global batch (``jax.make_array_from_process_local_data``): on several hosts each one
        streams its own shard (all hosts the same number of batches, each split evenly over
        its devices), and the result, identical on every host, is the moments of all of them.
        Without it, batches are used as given (JAX arrays may already be global).

    Returns:
      The merged :class:`Moments`.

    Raises:
      ValueError: no batches, an empty batch, a NaN or infinite value (the error names the
        batch), or batches with different quantities, target shapes or latent sizes.
    """
    acc = None if initial is None else _check_moments(initial, "initial")
    bar = _progress_bar(progress)
    pending = None  # (index, finite flag) of the previous batch, checked one step late
    index = -1
    try:
        for index, batch in enumerate(batches):
            Z, ys, names = _unpack(batch, index)
            if sharding is not None:
                Z, *ys = _global_batch(sharding, Z, ys, index)
                ys = tuple(ys)
            try:
                if acc is None:
                    acc, finite = _start(Z, ys, names=names)
                else:
                    acc, finite = _fold(acc, Z, ys, names=names)
            except (ValueError, TypeError) as e:
                raise type(e)(f"batches[{index}]: {e}") from e
            if pending is not None:
                _raise_if_not_finite(*pending)
            pending = (index, finite)
            if bar is not None:
                bar.update(jnp.shape(Z)[0])
        if pending is not None:
            _raise_if_not_finite(*pending)
    finally:
        if bar is not None:
            bar.close()
    if acc is None:
        raise ValueError("batches: the iterable yielded no batches")
    logger.debug("streamed %d batches, %s samples", index + 1, acc.count)
    return acc


def _raise_if_not_finite(index: int, finite: jax.Array) -> None:
    if not bool(finite):
        raise ValueError(f"batches[{index}]: contains NaN or infinity")
