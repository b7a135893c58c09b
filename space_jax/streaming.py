"""Streaming: fold an iterable of host batches into one :class:`~space_jax.Moments`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .moments import Moments, _check_moments, merge_moments, moments

__all__ = ["stream_moments"]

logger = logging.getLogger(__name__)


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
