"""Running a JAX function on torch tensors as a torch custom op, with torch autograd through it.

The bridge's one autograd module. :func:`call` takes a JAX function's arguments as they came
from the user (tensors, and dicts ``W``, ``A``, ``Y``, ``W_prev`` of tensors) and

1. flattens them into one list of tensors plus a *spec* string (:mod:`._spec`: the label, the
   dict keys, the static keywords with their types) and checks them on every call, before any
   cache is consulted: floating dtype, one device, static keywords of the right type and range;
2. calls the label's torch custom op (``torch.ops.space_torch_bridge.<label>``), or in eager mode
   on plain tensors its implementation directly (:class:`_EagerLoss`, :class:`_EagerFunction`:
   the same functions without torch's dispatcher, about 1 ms less per call). The op runs ONE
   jitted XLA call that returns the outputs and a finiteness flag per input, so NaN/inf inputs
   are refused before anything is returned. Compiled functions are cached per spec and grad
   mask (here) and per shapes/dtypes (by ``jax.jit``); :func:`trace_count` counts the traces;
3. for a loss the op also returns, from that same call, the gradients of exactly the leaves
   that require grad, and its registered backward only scales them by the incoming gradient
   (no work at all when that is 1). Other functions (pooling, SVDs, bases) have a second op,
   ``<label>_vjp``, that their backward calls;
4. rebuilds the result's dicts and tuples around the op's tensors (on the inputs' device, in
   their promoted dtype).

Because every step outside the ops is plain Python on tensors, dicts and constants, and every
op has a fake (shape-only) implementation and a registered backward, ``torch.compile`` traces
training steps that call the bridge, with ``fullgraph=True`` too. Gradients are first order:
differentiating them again raises an error that says so.
"""

from __future__ import annotations

import collections
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from space_torch_bridge import _convert, _spec

__all__ = ["call", "check_tensors", "host_call", "register", "trace_count"]

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


def _all_finite(arrays: Sequence[jax.Array]) -> jax.Array:
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in arrays])


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
def _vjp_fn(text: str, grad_mask: tuple[bool, ...]) -> Callable:
    """jit: ``(arrays, key, output cotangents) -> gradients of the masked arrays``."""
    spec = _spec.parse(text)

    def vjp(arrays, key, cotangents):
        def outputs_of(wrt):
            return _output_leaves(spec, _apply(spec, _merge(arrays, wrt, grad_mask), key))

        wrt = [x for x, m in zip(arrays, grad_mask, strict=True) if m]
        outs, pullback = jax.vjp(outputs_of, wrt)
        cotangents = [c.astype(o.dtype) for c, o in zip(cotangents, outs, strict=True)]
        return pullback(cotangents)[0]

    return jax.jit(vjp)


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
    ok = np.asarray(flags)
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


def _loss_impl(leaves, seed, spec_text, grad_mask):
    spec = _spec.parse(spec_text)
    _check_not_forked(spec.label)
    grad_mask = tuple(grad_mask)
    with _convert.precision_scope(*leaves):
        arrays = _to_jax(spec, leaves)
        if any(grad_mask):
            loss, grads, flags = _value_and_grad_fn(spec_text, grad_mask)(arrays, _key(seed))
        else:
            (loss,), flags = _value_fn(spec_text)(arrays, _key(seed))
            grads = []
        _check_finite(spec, flags)
        (out,) = _outputs_to_torch([loss], leaves, _like(leaves))
        return [out, *_grads_to_torch(grads, leaves, grad_mask)]


def _loss_fake(leaves, seed, spec_text, grad_mask):
    dtype = _convert.result_dtype(leaves)
    grads = [t.new_empty(t.shape) for t, m in zip(leaves, grad_mask, strict=True) if m]
    return [leaves[0].new_empty((), dtype=dtype), *grads]


def _function_impl(leaves, seed, spec_text, grad_mask):
    spec = _spec.parse(spec_text)
    _check_not_forked(spec.label)
    with _convert.precision_scope(*leaves):
        outs, flags = _value_fn(spec_text)(_to_jax(spec, leaves), _key(seed))
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


def _vjp_impl(leaves, seed, cotangents, spec_text, grad_mask):
    spec = _spec.parse(spec_text)
    grad_mask = tuple(grad_mask)
    with _convert.precision_scope(*leaves, *cotangents):
        arrays = _to_jax(spec, leaves)
        cts = [
            _convert.to_jax_argument(g, name=f"gradient of {spec.label} output {i}")
            for i, g in enumerate(cotangents)
        ]
        grads = _vjp_fn(spec_text, grad_mask)(arrays, _key(seed), cts)
        return _grads_to_torch(grads, leaves, grad_mask, cotangents)


def _vjp_fake(leaves, seed, cotangents, spec_text, grad_mask):
    return [t.new_empty(t.shape) for t, m in zip(leaves, grad_mask, strict=True) if m]


# --- torch autograd --------------------------------------------------------------------------


class _SecondOrderRefused(torch.autograd.Function):
    """Passes first-order gradients on; differentiating them again raises."""

    @staticmethod
    def forward(label: str, n: int, *tensors):
        return tuple(g.clone() for g in tensors[:n])

    @staticmethod
    def setup_context(ctx, inputs, output):  # this form also works under torch.func
        ctx.label = inputs[0]

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise RuntimeError(
            f"space_torch_bridge.{ctx.label}: second-order gradients (differentiating a gradient "
            "obtained with create_graph=True) are not supported through the bridge; use "
            "space_jax directly (jax.hessian, jax.jvp) for higher-order derivatives"
        )


def _refuse_second_order(label: str, grads: list, inputs: Sequence[torch.Tensor]) -> list:
    """With ``create_graph=True`` (eager), ties the gradients to the inputs through a refusing
    node. Compiled graphs need nothing: AOTAutograd refuses double backward itself."""
    if torch.compiler.is_compiling() or not torch.is_grad_enabled() or not grads:
        return grads
    return list(_SecondOrderRefused.apply(label, len(grads), *grads, *inputs))


def _scaled(grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """``grad * grad_output``, without the ``B x D`` product where ``grad_output`` is 1 (the
    usual ``loss.backward()``; checked on the CPU only, where reading it costs no sync, and
    only on a plain tensor: a traced one, fake or functional, gets the product)."""
    if (
        type(grad_output) is torch.Tensor
        and not torch.compiler.is_compiling()
        and _current_dispatch_mode() is None
        and grad_output.device.type == "cpu"
        and grad_output.numel() == 1
        and grad_output.item() == 1.0
    ):
        return grad
    return grad * grad_output.to(grad.dtype)


def _loss_setup(ctx, inputs, output):
    leaves, _, spec_text, grad_mask = inputs
    ctx.label = spec_text  # parsed only if an error message needs it
    ctx.grad_mask = tuple(grad_mask)
    ctx.n_grads = len(output) - 1
    masked = [t for t, m in zip(leaves, grad_mask, strict=True) if m]
    kept = [] if torch.compiler.is_compiling() else masked
    ctx.save_for_backward(*output[1:], *kept)


def _loss_backward(ctx, grad_outputs):
    saved = ctx.saved_tensors
    grads, inputs = saved[: ctx.n_grads], saved[ctx.n_grads :]
    grad_output = grad_outputs[0]
    scaled = [_scaled(g, grad_output) for g in grads]
    scaled = iter(_refuse_second_order(_spec.parse(ctx.label).label, scaled, inputs))
    return [next(scaled) if m else None for m in ctx.grad_mask], None, None, None


def _function_setup(ctx, inputs, output):
    leaves, seed, spec_text, grad_mask = inputs
    ctx.spec_text, ctx.grad_mask = spec_text, tuple(grad_mask)
    ctx.outputs = [(o.shape, o.dtype, o.device) for o in output]
    ctx.n_leaves = len(leaves)
    ctx.save_for_backward(*leaves, *([] if seed is None else [seed]))


def _function_backward(ctx, grad_outputs):
    saved = ctx.saved_tensors
    leaves, seed = list(saved[: ctx.n_leaves]), (saved[ctx.n_leaves :] or [None])[0]
    cotangents = [
        torch.zeros(shape, dtype=dtype, device=device) if g is None else g
        for g, (shape, dtype, device) in zip(grad_outputs, ctx.outputs, strict=True)
    ]
    spec = _spec.parse(ctx.spec_text)
    grads = _OPS[(spec.op, "vjp")](leaves, seed, cotangents, ctx.spec_text, list(ctx.grad_mask))
    inputs = [t for t, m in zip(leaves, ctx.grad_mask, strict=True) if m]
    grads = iter(_refuse_second_order(spec.label, list(grads), inputs))
    return [next(grads) if m else None for m in ctx.grad_mask], None, None, None


# --- eager calls: the same implementations, without torch's dispatcher ------------------------


class _EagerLoss(torch.autograd.Function):
    """A loss op's eager twin: :func:`_loss_impl` and :func:`_loss_backward` called directly.

    Going through ``torch.ops`` costs about 1 ms per call in eager mode (the dispatcher, the
    custom op's pytree flattening of arguments and gradients, its autograd wrapper); plain
    tensors outside any compilation, tracing or dispatch mode take this path instead, and so do
    ``torch.func`` transforms (``grad``), which torch's generated custom-op autograd does not
    support (this form, with ``setup_context``, it does). Outputs: the loss, then the
    gradients (not differentiable; the wrapper returns the loss alone).
    """

    @staticmethod
    def forward(spec_text, grad_mask, seed, *leaves):
        return tuple(_loss_impl(list(leaves), seed, spec_text, grad_mask))

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec_text, grad_mask, seed, *leaves = inputs
        ctx.mark_non_differentiable(*output[1:])
        _loss_setup(ctx, (leaves, seed, spec_text, grad_mask), output)

    @staticmethod
    def backward(ctx, grad_output, *unused):
        grads = _loss_backward(ctx, (grad_output,))[0]
        return (None, None, None, *grads)


class _EagerFunction(torch.autograd.Function):
    """A function op's eager twin (:class:`_EagerLoss`); its backward runs the ``_vjp`` op."""

    @staticmethod
    def forward(spec_text, grad_mask, seed, *leaves):
        return tuple(_function_impl(list(leaves), seed, spec_text, grad_mask))

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec_text, grad_mask, seed, *leaves = inputs
        _function_setup(ctx, (leaves, seed, spec_text, grad_mask), output)

    @staticmethod
    def backward(ctx, *grad_outputs):
        grads = _function_backward(ctx, grad_outputs)[0]
        return (None, None, None, *grads)


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _eager(leaves: Sequence[torch.Tensor]) -> bool:
    """Whether a call may skip the op: nothing compiling, tracing or intercepting it, and
    plain tensors (or ``torch.func``'s wrappers of them, which the twins unwrap)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if _current_dispatch_mode() is not None:
        return False
    return torch._C._are_functorch_transforms_active() or all(
        type(t) in _PLAIN_TENSORS for t in leaves
    )


def _run(op_name: str, kind: str, leaves, seed, spec_text: str, grad_mask: list) -> list:
    """The op's outputs for these inputs, eagerly where :func:`_eager` allows."""
    if not _eager(leaves):
        return _OPS[(op_name, kind)](leaves, seed, spec_text, grad_mask)
    mask = tuple(grad_mask)
    if not any(mask) and torch._C._are_functorch_transforms_active():
        # torch.func with nothing to differentiate (vmap): the op, which torch refuses clearly
        return _OPS[(op_name, kind)](leaves, seed, spec_text, grad_mask)
    if not any(mask):  # nothing to differentiate: no autograd node at all
        impl = _loss_impl if kind == "loss" else _function_impl
        return impl(leaves, seed, spec_text, mask)
    if kind == "loss":
        return [_EagerLoss.apply(spec_text, mask, seed, *leaves)[0]]
    return list(_EagerFunction.apply(spec_text, mask, seed, *leaves))


# --- the custom ops --------------------------------------------------------------------------

_NAMESPACE = "space_torch_bridge"
_OPS: dict[tuple[str, str], Any] = {}  # (op name, kind) -> torch.ops overload
_KIND_SCHEMAS = {
    "loss": "(Tensor[] leaves, Tensor? seed, str spec, bool[] grad_mask) -> Tensor[]",
    "function": "(Tensor[] leaves, Tensor? seed, str spec, bool[] grad_mask) -> Tensor[]",
    "vjp": (
        "(Tensor[] leaves, Tensor? seed, Tensor[] cotangents, str spec, bool[] grad_mask) "
        "-> Tensor[]"
    ),
}
# JAX runs on its own streams, outside any CUDA graph torch could capture.
_TAGS = tuple(getattr(torch.Tag, t) for t in ("cudagraph_unsafe",) if hasattr(torch.Tag, t))


def _define(name: str, kind: str, impl: Callable, fake: Callable):
    def run(*args):
        return impl(*args)

    op = torch.library.custom_op(
        f"{_NAMESPACE}::{name}", run, mutates_args=(), schema=_KIND_SCHEMAS[kind], tags=_TAGS
    )
    op.register_fake(fake)
    return op


def register(op_name: str, fn: Callable, *, loss: bool, differentiable: bool = True) -> None:
    """Binds ``op_name`` to the JAX function ``fn`` and defines its custom op(s):
    ``space_torch_bridge::<op_name>``, and ``<op_name>_vjp`` for a differentiable non-loss
    function (a non-differentiable one has no backward: the bridge detaches its inputs)."""
    _spec.register_function(op_name, fn)
    kind = "loss" if loss else "function"
    if (op_name, kind) in _OPS:
        return
    if any(key[0] == op_name for key in _OPS):
        raise ValueError(f"space_torch_bridge: {op_name!r} is already a custom op of another kind")
    if loss:
        op = _define(op_name, "loss", _loss_impl, _loss_fake)
        op.register_autograd(_loss_backward, setup_context=_loss_setup)
    else:
        op = _define(op_name, "function", _function_impl, _function_fake)
        if differentiable:
            _define(f"{op_name}_vjp", "vjp", _vjp_impl, _vjp_fake)
            _OPS[(op_name, "vjp")] = getattr(
                getattr(torch.ops, _NAMESPACE), f"{op_name}_vjp"
            ).default
            op.register_autograd(_function_backward, setup_context=_function_setup)
    _OPS[(op_name, kind)] = getattr(getattr(torch.ops, _NAMESPACE), op_name).default


def op(op_name: str, kind: str = "loss"):
    """The ``torch.ops`` overload of a registered op (``kind``: loss, function or vjp)."""
    return _OPS[(op_name, kind)]


# --- entry points ----------------------------------------------------------------------------


def call(
    fn: Callable,
    args: Sequence[Any],
    *,
    names: Sequence[str],
    label: str,
    static: Mapping[str, Any] | None = None,
    seed: torch.Tensor | None = None,
    loss: bool = False,
    differentiable: bool = True,
    output: Any = None,
    op_name: str | None = None,
) -> Any:
    """Runs ``fn(*args, **static)``, a jittable JAX function, on torch tensors, as a custom op.

    Args:
      fn: a jittable JAX function (a module-level object: the op runs it by name).
      args: its positional arguments: tensors, None, or dicts, tuples and lists of tensors.
      names: the user-facing name of each positional argument, for error messages.
      label: the public function's name, for error messages and :func:`trace_count`.
      static: keyword arguments compiled in (``n_dir``, ``solver``, ``k``): Python literals,
        already validated (they become part of the spec, with their types).
      seed: an integer tensor; when given, ``fn`` also gets ``key=jax.random.key(seed)``.
      loss: ``fn`` returns a scalar; gradients are computed with the forward call.
      differentiable: False for functions whose results the reference detaches.
      output: the result's structure (:mod:`._spec`); required under ``torch.compile``, learned
        from the first call otherwise.
      op_name: the custom op's name (default ``label``).

    Returns:
      ``fn``'s output with torch tensors on the inputs' device, in their promoted dtype.
    """
    op_name = op_name or label
    if not torch.compiler.is_compiling():  # public entry points are registered at import
        register(op_name, fn, loss=loss, differentiable=loss or differentiable)
    leaves: list[torch.Tensor] = []
    leaf_names: list[str] = []
    children = tuple(
        _spec.describe(a, n, label, leaves, leaf_names) for a, n in zip(args, names, strict=True)
    )
    if not leaves:
        raise TypeError(f"{label}: expected torch tensors, got none")
    check_tensors(leaves, leaf_names, label)
    static_items = tuple((k, v) for k, v in (static or {}).items())
    spec_text = _spec.build(
        label, op_name, names, ("tuple", children), output, static_items, seed is not None
    )
    grad = differentiable and torch.is_grad_enabled()
    grad_mask = [grad and t.requires_grad for t in leaves]
    if not differentiable:
        leaves = [t.detach() for t in leaves]
    if loss:
        return _run(op_name, "loss", leaves, seed, spec_text, grad_mask)[0]
    outs = _run(op_name, "function", leaves, seed, spec_text, grad_mask)
    structure = output if output is not None else _learned_outputs[spec_text]
    return _spec.unflatten(structure, iter(outs))


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
    leaves: list[torch.Tensor] = []
    leaf_names: list[str] = []
    for a, n in zip(args, names, strict=True):
        _spec.describe(a, n, label, leaves, leaf_names)
    check_tensors(leaves, leaf_names, label)
    _check_not_forked(label)
    with _convert.precision_scope(*leaves):
        converted = [_convert.tree_to_jax(a, name=n) for a, n in zip(args, names, strict=True)]
        return fn(*converted, **(static or {}))
