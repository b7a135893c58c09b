"""Reductions over the batch axis, in one place, so they shard the same way everywhere.

Every SPACE statistic is a contraction over the batch axis (axis 0): Gram matrices, cross
products with the targets, means. On a mesh the batch is sharded while the statistics are small
and replicated. Library code calls these helpers for every batch contraction instead of writing
``x.T @ y`` or ``x.mean(0)`` itself, so that:

* on one device, or when nothing is sharded, they are exactly ``a.T @ b``, ``jnp.sum(x, 0)``,
  ``jnp.mean(x, 0)`` and ``x[0]`` (same program, same speed);
  ``batch_gram`` forms a wide Gram matrix from column halves instead (3/4 of the arithmetic);
* on a mesh with **Auto** axes they are the same code, and XLA's sharding propagation turns the
  contraction into local products plus one all-reduce;
* on a mesh with **Explicit** axes (``jax.make_mesh``'s default since JAX 0.9), where the
  sharding is part of each array's type and a contraction over a sharded dimension must say
  where its result lives, they ask for a replicated result (``out_sharding=``): each device
  contracts its rows and one all-reduce of the small ``(m, n)`` result follows, never a gather
  of the batch. Non-batch dimensions keep their own sharding where that is consistent.

The sharding of a value is read from its type (``jax.typeof(x).sharding``), which is known at
trace time, so the choice costs nothing at run time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "batch_contract",
    "batch_first",
    "batch_gram",
    "batch_max",
    "batch_mean",
    "batch_sum",
    "explicit_batch_axes",
    "mesh_size",
    "replicated",
]


def _sharding(x):
    try:
        return jax.typeof(x).sharding
    except (TypeError, AttributeError):  # Python scalars, NumPy without a JAX type
        return None


def _spec(x, ndim: int) -> tuple:
    """The explicit partition of each dimension of ``x`` (``None`` where unsharded)."""
    sharding = _sharding(x)
    spec = tuple(getattr(sharding, "spec", None) or ())
    return spec + (None,) * (ndim - len(spec))


def _explicit(sharding, entry):
    """``entry`` of a partition spec if it names Explicit mesh axes, else None."""
    if entry is None or sharding is None:
        return None
    mesh = sharding.mesh
    names = entry if isinstance(entry, tuple) else (entry,)
    types = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
    if all(types.get(n) == AxisType.Explicit for n in names):
        return entry
    return None


def explicit_batch_axes(x) -> str | tuple | None:
    """The Explicit mesh axes that shard axis 0 of ``x`` (None when it is not sharded so)."""
    if jnp.ndim(x) == 0:
        return None
    sharding = _sharding(x)
    return _explicit(sharding, _spec(x, jnp.ndim(x))[0])


def mesh_size(*xs) -> int:
    """Number of devices of the mesh the operands live on (1 on one device or without a mesh).

    Auto as well as Explicit meshes count: under ``jax.jit`` an operand placed on a mesh keeps
    that (abstract) mesh in its type, so library code can pick an algorithm that needs only
    all-reduces (normal equations instead of a QR of the batch, say) when the batch may be
    spread over devices, and keep the one-device algorithm otherwise.
    """
    size = 1
    for x in xs:
        sharding = _sharding(x)
        mesh = getattr(sharding, "mesh", None)
        if mesh is not None and not mesh.empty:
            size = max(size, mesh.size)
    return size


def _axes(entry) -> set:
    if entry is None:
        return set()
    return set(entry) if isinstance(entry, tuple) else {entry}


def _mesh(*xs):
    for x in xs:
        sharding = _sharding(x)
        if sharding is not None and explicit_batch_axes(x) is not None:
            return sharding.mesh
    return None


def batch_contract(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a.T @ b`` over the shared batch axis 0: ``(B, m) x (B, n) -> (m, n)``, replicated.

    1-D operands are treated as ``(B, 1)`` and the result is squeezed as ``a.T @ b`` would be.
    With the batch sharded over Explicit mesh axes, both operands are brought to the same batch
    sharding (a local slice when one of them is replicated, no communication) and the product
    is asked to be replicated, which XLA lowers to local products and one all-reduce.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    batch = explicit_batch_axes(a) or explicit_batch_axes(b)
    if batch is None:
        return a.T @ b
    mesh = _mesh(a, b)
    squeeze = (a.ndim == 1, b.ndim == 1)
    a2 = a[:, None] if squeeze[0] else a
    b2 = b[:, None] if squeeze[1] else b
    spec_a, spec_b = _spec(a2, 2), _spec(b2, 2)
    if spec_a[0] != batch:
        a2 = jax.sharding.reshard(a2, NamedSharding(mesh, P(batch, spec_a[1])))
    if spec_b[0] != batch:
        b2 = jax.sharding.reshard(b2, NamedSharding(mesh, P(batch, spec_b[1])))
    # The result keeps the non-batch shardings that do not reuse the batch's axes or each other's.
    used = _axes(batch)
    left = spec_a[1] if not (_axes(spec_a[1]) & used) else None
    used |= _axes(left)
    right = spec_b[1] if not (_axes(spec_b[1]) & used) else None
    out = jnp.einsum("bm,bn->mn", a2, b2, out_sharding=NamedSharding(mesh, P(left, right)))
    if squeeze[0] and squeeze[1]:
        return out[0, 0]
    if squeeze[0]:
        return out[0]
    if squeeze[1]:
        return out[:, 0]
    return out


# From this width on, a Gram matrix is formed from column halves (see batch_gram).
BLOCKED_GRAM_MIN = 256


def batch_gram(x: jax.Array) -> jax.Array:
    """``x.T @ x`` over the batch axis: ``(B, d) -> (d, d)``, replicated, as :func:`batch_contract`.

    XLA has no symmetric rank-k kernel, so a full ``x.T @ x`` computes both triangles. From
    ``d = BLOCKED_GRAM_MIN`` columns on it is formed from the halves ``x = [a, b]`` as
    ``[[a.T a, a.T b], [(a.T b).T, b.T b]]``: three products of half width, 3/4 of the
    arithmetic. Its speed depends on the machine's kernels: on 2 CPU cores (alternating
    rounds; ``benchmarks.breakdown`` times both forms) it took 0.78-0.82x the time of one
    product at ``d = 512`` on one machine and 1.07-1.11x on another (AMD EPYC both), and the
    same time within noise at ``d = 256`` on both; on a third (AVX-512) 0.73x alone at
    ``d = 256``, and the whole combined-loss fwd+bwd there took 0.89-0.95x the time it takes
    with one product (per-round ratios, one process). On a mesh it all-reduces only the three
    distinct blocks (3/4 of the bytes). The off-diagonal blocks are exact transposes.
    """
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] < BLOCKED_GRAM_MIN:
        return batch_contract(x, x)
    h = x.shape[1] // 2
    a, b = x[:, :h], x[:, h:]
    ab = batch_contract(a, b)
    return jnp.block([[batch_contract(a, a), ab], [ab.T, batch_contract(b, b)]])


def batch_sum(x: jax.Array, *, keepdims: bool = False) -> jax.Array:
    """Sum over the batch axis 0: ``(B, ...) -> (...)``, replicated.

    A reduction over a sharded axis is well typed on Explicit meshes (the result is
    replicated, by one all-reduce), so this is ``jnp.sum`` everywhere.
    """
    return jnp.sum(x, axis=0, keepdims=keepdims)


def batch_mean(x: jax.Array, *, keepdims: bool = False) -> jax.Array:
    """Mean over the batch axis 0: ``(B, ...) -> (...)``, replicated."""
    return jnp.mean(x, axis=0, keepdims=keepdims)


def batch_max(x: jax.Array) -> jax.Array:
    """Maximum over the batch axis 0: ``(B, ...) -> (...)``, replicated (as :func:`batch_sum`)."""
    return jnp.max(x, axis=0)


def batch_first(x: jax.Array) -> jax.Array:
    """The first sample ``x[0]``: ``(B, ...) -> (...)``, replicated.

    Slicing one row out of an axis sharded over Explicit mesh axes is not allowed (the result
    cannot be split over the devices), so there it is a masked sum: one pass over the local rows
    and an all-reduce of one row.
    """
    x = jnp.asarray(x)
    if explicit_batch_axes(x) is None:
        return x[0]
    first = jnp.arange(x.shape[0]) == 0
    return jnp.sum(jnp.where(first.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0), axis=0)


def replicated(x: jax.Array) -> jax.Array:
    """``x`` with its batch axis gathered on every device where it is sharded over Explicit
    mesh axes (other dimensions keep their sharding); ``x`` itself otherwise.

    For the few places where the whole batch is cheaper to move than a statistic of it.
    """
    x = jnp.asarray(x)
    if explicit_batch_axes(x) is None:
        return x
    spec = _spec(x, x.ndim)
    return jax.sharding.reshard(x, NamedSharding(_sharding(x).mesh, P(None, *spec[1:])))
