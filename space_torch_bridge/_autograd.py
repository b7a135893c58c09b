"""Running a JAX function on torch tensors, with torch autograd through it.

The bridge's one autograd module. :func:`call` takes a JAX function and its arguments as they
came from the user (pytrees of torch tensors: ``Z``, dicts ``W``, ``A``, ``Y``, ``W_prev``) and

1. flattens the arguments into leaves (dicts keep their order: it is the quantity order) and
   checks them: floating dtype and one device, with errors that name the leaf (``Y['field']``);
2. runs ONE jitted XLA call that returns the outputs and a finiteness flag per input, so NaN/inf
   inputs are refused before anything is returned. Compiled functions are cached per argument
   structure, static arguments and grad mask (here) and per shapes/dtypes (by ``jax.jit``), so
   a training loop compiles once; :func:`trace_count` counts the traces;
3. for a loss (scalar output) computes, in that same call, the gradients of exactly the leaves
   that require grad; ``backward`` only scales them by the incoming gradient. For other
   functions (pooling, SVDs, bases) ``backward`` runs a second jitted call, the VJP;
4. returns torch tensors on the inputs' device, in the inputs' promoted dtype.

None of the autograd machinery runs under ``torch.no_grad()`` or when no input requires grad:
then it is the plain jitted call. Gradients are first order: differentiating them again raises
an error that says so.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from space_torch_bridge import _convert

__all__ = ["call", "check_tensors", "host_call", "trace_count"]

_trace_counts: collections.Counter[str] = collections.Counter()


def trace_count(label: str | None = None) -> int:
    """How many times the bridge traced (and so compiled) a function: for ``label``, or all."""
    if label is None:
        return sum(_trace_counts.values())
    return _trace_counts[label]


# --- argument trees --------------------------------------------------------------------------


@jax.tree_util.register_pytree_with_keys_class
class _Ordered:
    """A dict as a pytree node that keeps its key order (JAX's dict nodes sort their keys)."""

    __slots__ = ("keys", "values")

    def __init__(self, keys: tuple, values: Sequence):
        self.keys, self.values = keys, tuple(values)

    def tree_flatten_with_keys(self):
        pairs = zip(self.keys, self.values, strict=True)
        return [(jax.tree_util.DictKey(k), v) for k, v in pairs], self.keys

    def tree_flatten(self):
        return self.values, self.keys

    @classmethod
    def tree_unflatten(cls, keys, values):
        return cls(keys, values)


def _ordered(tree: Any) -> Any:
    """Replaces every mapping in a nest of mappings, tuples and lists by an :class:`_Ordered`."""
    if isinstance(tree, Mapping):
        return _Ordered(tuple(tree), [_ordered(v) for v in tree.values()])
    if isinstance(tree, tuple | list):
        children = [_ordered(v) for v in tree]
        return type(tree)(*children) if hasattr(tree, "_fields") else type(tree)(children)
    return tree


def _plain(tree: Any) -> Any:
    """The inverse of :func:`_ordered`."""
    if isinstance(tree, _Ordered):
        return {k: _plain(v) for k, v in zip(tree.keys, tree.values, strict=True)}
    if isinstance(tree, tuple | list):
        children = [_plain(v) for v in tree]
        return type(tree)(*children) if hasattr(tree, "_fields") else type(tree)(children)
    return tree


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for a static argument (mappings keep their order)."""
    if isinstance(value, Mapping):
        return ("mapping", tuple((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    return value


def _flatten(args: Sequence[Any], names: Sequence[str], label: str):
    """Tensor leaves of the positional arguments: ``(treedef, names, tensors)``.

    Arguments are tensors, None, or dicts/tuples/lists of tensors; anything else (a NumPy
    array, a list of floats) is refused here rather than failing somewhere inside JAX.
    """
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(_ordered(tuple(args)))
    leaf_names, tensors = [], []
    for path, leaf in path_leaves:
        name = names[path[0].idx] + jax.tree_util.keystr(tuple(path[1:]))
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"{label}: {name} must be a torch.Tensor, got {type(leaf).__name__}")
        leaf_names.append(name)
        tensors.append(leaf)
    return treedef, leaf_names, tensors


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


# --- compiled functions ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Signature:
    """What XLA sees as static in a call; the cache key of its compiled functions."""

    fn: Callable
    label: str
    treedef: Any
    static_kwargs: Hashable
    static_kwargs_value: Any = dataclasses.field(compare=False, hash=False)

    def apply(self, tensors: Sequence[jax.Array], extras: Mapping[str, jax.Array]) -> Any:
        """The JAX function; ``tensors`` are widened to one floating dtype first."""
        _trace_counts[self.label] += 1
        dtype = jnp.result_type(*tensors)
        leaves = [x.astype(dtype) for x in tensors]
        args = _plain(jax.tree_util.tree_unflatten(self.treedef, leaves))
        return _ordered(self.fn(*args, **extras, **self.static_kwargs_value))


def _all_finite(tensors: Sequence[jax.Array]) -> jax.Array:
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in tensors])


def _merge(tensors, wrt, grad_mask):
    it = iter(wrt)
    return [next(it) if m else x for x, m in zip(tensors, grad_mask, strict=True)]


@functools.cache
def _value_fn(sig: _Signature) -> Callable:
    """jit: ``(tensors, extras) -> (outputs, finite flag per tensor)``."""

    def value(tensors, extras):
        return sig.apply(tensors, extras), _all_finite(tensors)

    return jax.jit(value)


@functools.cache
def _value_and_grad_fn(sig: _Signature, grad_mask: tuple[bool, ...]) -> Callable:
    """jit: ``(tensors, extras) -> (loss, gradients of the masked tensors, finite flags)``."""

    def value_and_grad(tensors, extras):
        def loss_of(wrt):
            loss = sig.apply(_merge(tensors, wrt, grad_mask), extras)
            if jnp.ndim(loss) != 0:
                raise TypeError(f"{sig.label}: expected a scalar loss, got shape {jnp.shape(loss)}")
            return loss

        wrt = [x for x, m in zip(tensors, grad_mask, strict=True) if m]
        loss, grads = jax.value_and_grad(loss_of)(wrt)
        return loss, grads, _all_finite(tensors)

    return jax.jit(value_and_grad)


@functools.cache
def _vjp_fn(sig: _Signature, grad_mask: tuple[bool, ...]) -> Callable:
    """jit: ``(tensors, extras, output cotangents) -> gradients of the masked tensors``."""

    def vjp(tensors, extras, cotangents):
        def outputs_of(wrt):
            return jax.tree_util.tree_leaves(sig.apply(_merge(tensors, wrt, grad_mask), extras))

        wrt = [x for x, m in zip(tensors, grad_mask, strict=True) if m]
        outs, pullback = jax.vjp(outputs_of, wrt)
        cotangents = [c.astype(o.dtype) for c, o in zip(cotangents, outs, strict=True)]
        return pullback(cotangents)[0]

    return jax.jit(vjp)


# --- one call --------------------------------------------------------------------------------


@dataclasses.dataclass
class _Call:
    """One call of a JAX function on torch tensors: its checked leaves and how to convert."""

    sig: _Signature
    tensors: list[torch.Tensor]
    names: list[str]
    extras: dict[str, jax.Array]
    out_like: torch.Tensor  # an empty tensor with the result's device and dtype
    out_treedef: Any = None

    def to_jax(self, tensors: Sequence[torch.Tensor]) -> list[jax.Array]:
        return [_convert.to_jax(t, name=n) for t, n in zip(tensors, self.names, strict=True)]

    def check_finite(self, flags: jax.Array) -> None:
        ok = np.asarray(flags)
        if not ok.all():
            bad = [n for n, f in zip(self.names, ok, strict=True) if not f]
            raise ValueError(
                f"{self.sig.label}: {', '.join(bad)} contains NaN or infinity; "
                "the bridge refuses non-finite inputs"
            )

    def outputs_to_torch(self, out: Any) -> list[torch.Tensor]:
        leaves, self.out_treedef = jax.tree_util.tree_flatten(out)
        return [_convert.to_torch(x, self.out_like) for x in leaves]

    def grads_to_torch(self, grads, grad_mask) -> list[torch.Tensor | None]:
        it = iter(grads)
        return [
            _convert.to_torch(next(it), like=t) if m else None
            for t, m in zip(self.tensors, grad_mask, strict=True)
        ]

    def forward(self) -> list[torch.Tensor]:
        """The outputs, without gradients."""
        with _convert.precision_scope(*self.tensors):
            out, flags = _value_fn(self.sig)(self.to_jax(self.tensors), self.extras)
            self.check_finite(flags)
            return self.outputs_to_torch(out)


def _prepare(fn, args, names, static, extras, label) -> _Call:
    treedef, tensor_names, tensors = _flatten(args, names, label)
    if not tensors:
        raise TypeError(f"{label}: expected torch tensors, got none")
    check_tensors(tensors, tensor_names, label)
    sig = _Signature(
        fn=fn,
        label=label,
        treedef=treedef,
        static_kwargs=_freeze(dict(static)),
        static_kwargs_value=dict(static),
    )
    out_like = torch.empty((), dtype=_convert.result_dtype(tensors), device=tensors[0].device)
    return _Call(sig, tensors, tensor_names, dict(extras), out_like)


# --- torch autograd --------------------------------------------------------------------------


class _SecondOrderRefused(torch.autograd.Function):
    """Passes first-order gradients on; differentiating them again raises."""

    @staticmethod
    def forward(ctx, label: str, n: int, *tensors):
        ctx.label = label
        return tuple(g.clone() for g in tensors[:n])

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise RuntimeError(
            f"space_torch_bridge.{ctx.label}: second-order gradients (differentiating a gradient "
            "obtained with create_graph=True) are not supported through the bridge; use "
            "space_jax directly (jax.hessian, jax.jvp) for higher-order derivatives"
        )


def _refuse_second_order(label: str, grads: list, inputs: Sequence[torch.Tensor]) -> list:
    """With ``create_graph=True``, ties the gradients to the inputs through a refusing node."""
    if not torch.is_grad_enabled():
        return grads
    present = [g for g in grads if g is not None]
    refused = iter(_SecondOrderRefused.apply(label, len(present), *present, *inputs))
    return [None if g is None else next(refused) for g in grads]


class JaxLoss(torch.autograd.Function):
    """A scalar JAX function whose one forward call also returns the needed gradients."""

    @staticmethod
    def forward(ctx, call: _Call, grad_mask: tuple[bool, ...], *tensors):
        with _convert.precision_scope(*tensors):
            fn = _value_and_grad_fn(call.sig, grad_mask)
            loss, grads, flags = fn(call.to_jax(tensors), call.extras)
            call.check_finite(flags)
            (out,) = call.outputs_to_torch(loss)
            torch_grads = [g for g in call.grads_to_torch(grads, grad_mask) if g is not None]
        inputs = [t for t, m in zip(tensors, grad_mask, strict=True) if m]
        ctx.label, ctx.n_grads, ctx.grad_mask = call.sig.label, len(torch_grads), grad_mask
        ctx.save_for_backward(*torch_grads, *inputs)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        saved = ctx.saved_tensors
        grads, inputs = saved[: ctx.n_grads], saved[ctx.n_grads :]
        scaled = [g * grad_output.to(g.dtype) for g in grads]
        scaled = iter(_refuse_second_order(ctx.label, scaled, inputs))
        return (None, None, *(next(scaled) if m else None for m in ctx.grad_mask))


class JaxFunction(torch.autograd.Function):
    """Any JAX function: forward is one jitted call, backward one jitted VJP call."""

    @staticmethod
    def forward(ctx, call: _Call, grad_mask: tuple[bool, ...], *tensors):
        outputs = call.forward()
        ctx.call, ctx.grad_mask = call, grad_mask
        ctx.save_for_backward(*tensors)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grad_outputs):
        call, grad_mask = ctx.call, ctx.grad_mask
        tensors = ctx.saved_tensors
        with _convert.precision_scope(*tensors, *grad_outputs):
            cotangents = [
                _convert.to_jax(g, name=f"gradient of {call.sig.label} output {i}")
                for i, g in enumerate(grad_outputs)
            ]
            fn = _vjp_fn(call.sig, grad_mask)
            grads = fn(call.to_jax(tensors), call.extras, cotangents)
            torch_grads = call.grads_to_torch(grads, grad_mask)
        inputs = [t for t, m in zip(tensors, grad_mask, strict=True) if m]
        return (None, None, *_refuse_second_order(call.sig.label, torch_grads, inputs))


# --- entry points ----------------------------------------------------------------------------


def call(
    fn: Callable,
    args: Sequence[Any],
    *,
    names: Sequence[str],
    label: str,
    static: Mapping[str, Any] | None = None,
    extras: Mapping[str, jax.Array] | None = None,
    loss: bool = False,
    differentiable: bool = True,
) -> Any:
    """Runs ``fn(*args, **extras, **static)``, a jittable JAX function, on torch tensors.

    Args:
      fn: a jittable JAX function (a module-level object: it is part of the cache key).
      args: its positional arguments: tensors, None, or dicts, tuples and lists of tensors.
      names: the user-facing name of each positional argument, for error messages.
      label: the public function's name, for error messages and :func:`trace_count`.
      static: keyword arguments compiled in (``n_dir``, ``solver``, ``k``).
      extras: keyword arguments that are JAX arrays passed as they are (PRNG keys).
      loss: ``fn`` returns a scalar; gradients are computed with the forward call.
      differentiable: False for functions whose results the reference detaches.

    Returns:
      ``fn``'s output with torch tensors on the inputs' device, in their promoted dtype.
    """
    c = _prepare(fn, args, names, static or {}, extras or {}, label)
    grad_mask = tuple(
        differentiable and torch.is_grad_enabled() and t.requires_grad for t in c.tensors
    )
    if not any(grad_mask):
        outputs = c.forward()
    elif loss:
        outputs = [JaxLoss.apply(c, grad_mask, *c.tensors)]
    else:
        outputs = list(JaxFunction.apply(c, grad_mask, *c.tensors))
    return _plain(jax.tree_util.tree_unflatten(c.out_treedef, outputs))


def host_call(
    fn: Callable,
    args: Sequence[Any],
    *,
    names: Sequence[str],
    label: str,
    static: Mapping[str, Any] | None = None,
) -> Any:
    """Runs a host-level JAX function (one returning Python values) on torch tensors.

    The tensors are checked as in :func:`call`, shared with JAX under the right precision and
    passed as arrays; ``fn`` does its own eager checks (NaN/inf included).
    """
    _, tensor_names, tensors = _flatten(args, names, label)
    check_tensors(tensors, tensor_names, label)
    with _convert.precision_scope(*tensors):
        converted = [_convert.tree_to_jax(a, name=n) for a, n in zip(args, names, strict=True)]
        return fn(*converted, **(static or {}))
