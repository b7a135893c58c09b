"""The bridge's JAX side: the jitted function behind each op, and the ops' implementations.

Every bridged call is described by a *spec* string (:mod:`._spec`). Per spec and grad mask this
module compiles ONE jitted XLA function (:func:`_value_fn`, :func:`_value_and_grad_fn`,
:func:`_vjp_fn`, and their ``jax.vmap``-ed forms, :func:`_batched`) that returns the outputs,
the gradients where asked, and a finiteness flag per input. The implementations
(:func:`_loss_impl`, :func:`_function_impl`, :func:`_vjp_impl`) take torch tensors, hand them to
that function (:mod:`._convert`), refuse non-finite inputs from its flags and return torch
tensors; the fakes (``*_fake``) give the same results' shapes and dtypes for ``torch.compile``.
How they become torch custom ops with autograd is :mod:`._autograd`.
"""

from __future__ import annotations

import collections
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from space_torch_bridge import _convert, _spec

__all__ = ["check_tensors", "trace_count"]

_trace_counts: collections.Counter[str] = collections.Counter()
_learned_outputs: dict[str, Any] = {}  # spec -> output structure, for specs that leave it open


def trace_count(label: str | None = None) -> int:
    """How many times the bridge traced (and so compiled) a function: for ``label``, or all."""
    if label is None:
        return sum(_trace_counts.values())
    return _trace_counts[label]


def check_tensors(tensors: Sequence[torch.Tensor], names: Sequence[str], label: str) -> None:
    """Refuses non-floating tensors and tensors on different devices, naming the culprit."""
    for t, name in zip(tensors, names, strict=True):
        if not t.is_floating_point():
            raise TypeError(f"{label}: {name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.device != tensors[0].device:
            raise ValueError(
                f"{label}: {name} is on {t.device} but {names[0]} is on {tensors[0].device}; "
                "move all tensors to one device"
            )


# --- the JAX side: one jitted function per spec ----------------------------------------------


def _apply(spec: _spec.Spec, arrays: Sequence[jax.Array], key: Any, *, count: bool = True):
    """The JAX function on the leaves; they are widened to one floating dtype first."""
    if count:
        _trace_counts[spec.label] += 1
    dtype = jnp.result_type(*arrays)
    args = spec.arguments([x.astype(dtype) for x in arrays])
    kwargs = dict(spec.static)
    if spec.takes_key:
        kwargs["key"] = key
    return spec.fn(*args, **kwargs)


def _output_leaves(spec: _spec.Spec, out: Any) -> list:
    structure = spec.output
    if structure is None:  # learned while tracing, for the wrapper to rebuild the result
        structure = _learned_outputs.setdefault(spec.text, _spec.structure_of(out))
    leaves: list = []
    try:
        _spec.select(out, structure, leaves)
    except TypeError as e:  # a bug in a bridge entry point, never a user error
        raise RuntimeError(f"space_torch_bridge.{spec.label}: unexpected result: {e}") from None
    return leaves


def _finite(x: jax.Array) -> jax.Array:
    """Whether ``x`` holds no NaN or infinity: a scalar bool.

    On CPU its sums over axis 0 decide first: a NaN or infinity makes its column's sum
    non-finite, and the functions already sum their batches over axis 0 (for the means), so XLA
    computes that reduction once for both. Only where a sum is not finite (a bad entry, or
    finite entries whose sum overflows) is every entry tested, in the branch of a ``lax.cond``
    that runs then only. Measured against testing every entry (``jax.value_and_grad`` of the
    combined loss, 2 CPU cores): 0.25 against 0.8 ms over the loss at the main size, 4 against
    13.5 ms at the large one (one pass over ``Z`` and ``Y`` fewer). Elsewhere every entry is
    tested: a GPU reads a ``cond``'s predicate back to the host, a wait per input, and its
    memory makes the extra pass cheap.
    """
    if x.ndim == 0:
        return jnp.isfinite(x)

    def every_entry(x):
        return jnp.all(jnp.isfinite(x))

    def sums_first(x):
        sums_finite = jnp.all(jnp.isfinite(jnp.sum(x, axis=0)))
        return jax.lax.cond(sums_finite, lambda x: jnp.ones((), bool), every_entry, x)

    return jax.lax.platform_dependent(x, cpu=sums_first, default=every_entry)


def _all_finite(arrays: Sequence[jax.Array]) -> jax.Array:
    return jnp.stack([_finite(x) for x in arrays])


def _merge(arrays, wrt, grad_mask):
    it = iter(wrt)
    return [next(it) if m else x for x, m in zip(arrays, grad_mask, strict=True)]


@functools.cache
def _value_fn(text: str) -> Callable:
    """jit: ``(arrays, key) -> (output leaves, finite flag per array)``."""
    spec = _spec.parse(text)

    def value(arrays, key):
        return _output_leaves(spec, _apply(spec, arrays, key)), _all_finite(arrays)

    return jax.jit(value)


@functools.cache
def _value_and_grad_fn(text: str, grad_mask: tuple[bool, ...]) -> Callable:
    """jit: ``(arrays, key) -> (loss, gradients of the masked arrays, finite flags)``."""
    spec = _spec.parse(text)

    def value_and_grad(arrays, key):
        def loss_of(wrt):
            loss = _apply(spec, _merge(arrays, wrt, grad_mask), key)
            if jnp.ndim(loss) != 0:
                raise TypeError(
                    f"{spec.label}: expected a scalar loss, got shape {jnp.shape(loss)}"
                )
            return loss

        wrt = [x for x, m in zip(arrays, grad_mask, strict=True) if m]
        loss, grads = jax.value_and_grad(loss_of)(wrt)
        return loss, grads, _all_finite(arrays)

    return jax.jit(value_and_grad)


@functools.cache
def _vjp_fn(text: str, grad_mask: tuple[bool, ...], used: tuple[bool, ...]) -> Callable:
    """jit: ``(arrays, key, cotangents of the used outputs) -> gradients of the masked arrays``.

    Only the outputs that received a gradient (``used``) are differentiated, as torch does: a
    zero cotangent would still meet an unused output's infinite derivative (``0 * inf``, e.g.
    ``arccos`` at 1 in ``subspace_change``'s angles) and make the gradients NaN.
    """
    spec = _spec.parse(text)

    def vjp(arrays, key, cotangents):
        def outputs_of(wrt):
            outs = _output_leaves(spec, _apply(spec, _merge(arrays, wrt, grad_mask), key))
            return [o for o, u in zip(outs, used, strict=True) if u]

        wrt = [x for x, m in zip(arrays, grad_mask, strict=True) if m]
        outs, pullback = jax.vjp(outputs_of, wrt)
        cotangents = [c.astype(o.dtype) for c, o in zip(cotangents, outs, strict=True)]
        return pullback(cotangents)[0]

    return jax.jit(vjp)


@functools.cache
def _batched(fn: Callable, axes: tuple[int | None, ...], cotangents: bool = False) -> Callable:
    """jit: ``fn`` (one of the above: ``(arrays, key[, cotangents])``) mapped by ``jax.vmap``
    over axis 0 of the arrays whose entry in ``axes`` is 0 (the others are shared), and of
    every cotangent; every output, flags included, gains a leading batch axis. What the bridge
    runs under ``torch.func.vmap`` (:class:`_BatchedLoss`, :class:`_BatchedFunction`)."""
    in_axes = (list(axes), None, 0) if cotangents else (list(axes), None)
    return jax.jit(jax.vmap(fn, in_axes=in_axes))


# --- between torch and JAX, inside the ops ---------------------------------------------------

_forked_after_jax = False


def _note_fork() -> None:
    global _forked_after_jax
    from jax._src import xla_bridge

    _forked_after_jax = _forked_after_jax or xla_bridge.backends_are_initialized()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork)


def _check_not_forked(label: str) -> None:
    """A child forked after JAX started cannot run JAX (its threads did not survive the fork):
    it would hang. Say so instead (DataLoader workers use fork by default on Linux)."""
    if _forked_after_jax:
        raise RuntimeError(
            f"space_torch_bridge.{label}: this process was forked after JAX started in its "
            "parent (e.g. a DataLoader worker with the default 'fork' start method); JAX "
            "cannot run in a forked child, it would deadlock. Start the workers with "
            "DataLoader(..., multiprocessing_context='spawn') (or 'forkserver')."
        )


def _key(seed: torch.Tensor | None):
    return None if seed is None else jax.random.key(int(seed))


def _to_jax(spec: _spec.Spec, leaves: Sequence[torch.Tensor]) -> list:
    """The leaves as arguments of the jitted call (small CPU ones as NumPy views)."""
    return [
        _convert.to_jax_argument(t, name=n) for t, n in zip(leaves, spec.leaf_names, strict=True)
    ]


def _check_finite(spec: _spec.Spec, flags: jax.Array) -> None:
    """Raises naming the inputs whose flag is False (flags ``(n_leaves,)``, or ``(N,
    n_leaves)`` from a batched call: a leaf is bad if any of its batch items is)."""
    ok = np.asarray(flags).reshape(-1, len(spec.leaf_names)).all(axis=0)
    if not ok.all():
        bad = [n for n, f in zip(spec.leaf_names, ok, strict=True) if not f]
        raise ValueError(
            f"{spec.label}: {', '.join(bad)} contains NaN or infinity; "
            "the bridge refuses non-finite inputs"
        )


def _storages(tensors: Sequence[torch.Tensor]) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors if t.numel()}


def _fresh(out: torch.Tensor, storages: set[int]) -> torch.Tensor:
    """``out``, or a copy where it shares memory with an input (a custom op's outputs must not
    alias its inputs; ``jax.jit`` hands an unchanged input back as its own buffer).
    ``storages``: the inputs' storage addresses (:func:`_storages`)."""
    if out.numel() and out.untyped_storage().data_ptr() in storages:
        return out.clone()
    return out


def _outputs_to_torch(arrays, leaves, like: torch.Tensor) -> list[torch.Tensor]:
    storages = _storages(leaves)
    return [_fresh(_convert.to_torch(x, like), storages) for x in arrays]


def _grads_to_torch(grads, leaves, grad_mask, others=()) -> list[torch.Tensor]:
    """Gradients of the masked leaves, each in its leaf's dtype."""
    masked = [t for t, m in zip(leaves, grad_mask, strict=True) if m]
    storages = _storages([*leaves, *others])
    return [
        _fresh(_convert.to_torch(g, like=t), storages) for g, t in zip(grads, masked, strict=True)
    ]


def _like(leaves: Sequence[torch.Tensor]) -> torch.Tensor:
    """A tensor with the results' device and dtype: the first leaf, where it has both."""
    dtype = _convert.result_dtype(leaves)
    if leaves[0].dtype == dtype:
        return leaves[0]
    return torch.empty((), dtype=dtype, device=leaves[0].device)


def _loss_impl(leaves, seed, spec_text, grad_mask, axes=None):
    """The loss (and the masked leaves' gradients) of one call; with ``axes`` (a
    :func:`_batched` call: 0 or None per leaf) one per batch item."""
    spec = _spec.parse(spec_text)
    _check_not_forked(spec.label)
    grad_mask = tuple(grad_mask)
    with _convert.precision_scope(*leaves):
        arrays = _to_jax(spec, leaves)
        if any(grad_mask):
            fn = _value_and_grad_fn(spec_text, grad_mask)
            loss, grads, flags = (fn if axes is None else _batched(fn, axes))(arrays, _key(seed))
        else:
            fn = _value_fn(spec_text)
            (loss,), flags = (fn if axes is None else _batched(fn, axes))(arrays, _key(seed))
            grads = []
        _check_finite(spec, flags)
        (out,) = _outputs_to_torch([loss], leaves, _like(leaves))
        return [out, *_grads_to_torch(grads, leaves, grad_mask)]


def _loss_fake(leaves, seed, spec_text, grad_mask):
    dtype = _convert.result_dtype(leaves)
    grads = [t.new_empty(t.shape) for t, m in zip(leaves, grad_mask, strict=True) if m]
    return [leaves[0].new_empty((), dtype=dtype), *grads]


def _function_impl(leaves, seed, spec_text, grad_mask, axes=None):
    spec = _spec.parse(spec_text)
    _check_not_forked(spec.label)
    with _convert.precision_scope(*leaves):
        fn = _value_fn(spec_text) if axes is None else _batched(_value_fn(spec_text), axes)
        outs, flags = fn(_to_jax(spec, leaves), _key(seed))
        _check_finite(spec, flags)
        return _outputs_to_torch(outs, leaves, _like(leaves))


def _torch_dtype(dtype, like: torch.Tensor) -> torch.dtype:
    if jnp.issubdtype(dtype, jnp.floating):
        return like.dtype
    return getattr(torch, jnp.dtype(dtype).name)


def _function_fake(leaves, seed, spec_text, grad_mask):
    spec = _spec.parse(spec_text)
    like = _like(leaves)
    with _convert.precision_scope(*leaves):
        avals = [
            jax.ShapeDtypeStruct(
                tuple(int(d) for d in t.shape), _convert.jax_dtype(_convert.compute_dtype(t.dtype))
            )
            for t in leaves
        ]
        key = jax.random.key(0) if spec.takes_key else None
        out = jax.eval_shape(lambda a, k: _apply(spec, a, k, count=False), avals, key)
        shapes = _output_leaves(spec, out)
    device = leaves[0].device
    return [torch.empty(s.shape, dtype=_torch_dtype(s.dtype, like), device=device) for s in shapes]


def _vjp_impl(leaves, seed, cotangents, spec_text, grad_mask, used, axes=None):
    """The masked leaves' gradients from the cotangents of the ``used`` outputs."""
    spec = _spec.parse(spec_text)
    grad_mask = tuple(grad_mask)
    with _convert.precision_scope(*leaves, *cotangents):
        arrays = _to_jax(spec, leaves)
        cts = [
            _convert.to_jax_argument(g, name=f"gradient of {spec.label} output {i}")
            for i, g in enumerate(cotangents)
        ]
        fn = _vjp_fn(spec_text, grad_mask, tuple(used))
        grads = (fn if axes is None else _batched(fn, axes, True))(arrays, _key(seed), cts)
        return _grads_to_torch(grads, leaves, grad_mask, cotangents)


def _vjp_fake(leaves, seed, cotangents, spec_text, grad_mask, used):
    return [t.new_empty(t.shape) for t, m in zip(leaves, grad_mask, strict=True) if m]
