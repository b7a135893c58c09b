"""Running a JAX function on torch tensors as a torch custom op, with torch autograd through it.

The bridge's one autograd module. :func:`call` takes a JAX function's arguments as they came
from the user (tensors, and dicts ``W``, ``A``, ``Y``, ``W_prev`` of tensors) and

1. flattens them into one list of tensors plus a *spec* string (:mod:`._spec`: the label, the
   dict keys, the static keywords with their types) and checks them on every call, before any
   cache is consulted: floating dtype, one device, static keywords of the right type and range;
2. calls the label's torch custom op (``torch.ops.space_torch_bridge.<label>``), or in eager mode
   on plain tensors its implementation directly (:class:`_EagerLoss`, :class:`_EagerFunction`:
   the same functions without torch's dispatcher, about 1 ms less per call; they also carry
   the ``torch.func`` support: ``grad``, and ``vmap`` as one ``jax.vmap``-ed call). The op runs ONE
   jitted XLA call that returns the outputs and a finiteness flag per input, so NaN/inf inputs
   are refused before anything is returned. The jitted functions and the ops' implementations
   are :mod:`._impl`'s, cached per spec and grad mask (there) and per shapes/dtypes (by
   ``jax.jit``); :func:`trace_count` counts the traces;
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

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from space_torch_bridge import _convert, _spec
from space_torch_bridge._impl import (
    _check_not_forked,
    _function_fake,
    _function_impl,
    _learned_outputs,
    _loss_fake,
    _loss_impl,
    _vjp_fake,
    _vjp_impl,
    check_tensors,
    trace_count,
)

__all__ = ["call", "check_tensors", "host_call", "register", "trace_count"]  # the last two: _impl


# --- torch autograd --------------------------------------------------------------------------


class _SecondOrderRefused(torch.autograd.Function):
    """Passes first-order gradients on; differentiating them again raises."""

    generate_vmap_rule = True  # its forward is torch's clone: torch.func.vmap(grad(...)) works

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
        and not torch._C._are_functorch_transforms_active()  # a vmapped one has no .item()
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


def _loss_backward(ctx, grad_outputs, axes=None):
    """The saved gradients scaled by the loss's; for a batched call (``axes``) each item's by
    its own loss's gradient, and a shared leaf's summed over the batch."""
    grad_output = grad_outputs[0]
    if grad_output is None:  # the eager twins do not materialise an absent cotangent
        return [None] * len(ctx.grad_mask), None, None, None
    saved = ctx.saved_tensors
    grads, inputs = saved[: ctx.n_grads], saved[ctx.n_grads :]
    if axes is None:
        scaled = [_scaled(g, grad_output) for g in grads]
    else:
        per_item = [g * grad_output.reshape(-1, *[1] * (g.ndim - 1)).to(g.dtype) for g in grads]
        scaled = _per_item(per_item, axes, ctx.grad_mask)
    scaled = iter(_refuse_second_order(_spec.parse(ctx.label).label, scaled, inputs))
    return [next(scaled) if m else None for m in ctx.grad_mask], None, None, None


def _function_setup(ctx, inputs, output):
    leaves, seed, spec_text, grad_mask = inputs
    ctx.spec_text, ctx.grad_mask = spec_text, tuple(grad_mask)
    ctx.set_materialize_grads(False)  # None marks an output no gradient reached
    ctx.n_leaves = len(leaves)
    ctx.save_for_backward(*leaves, *([] if seed is None else [seed]))


def _function_backward(ctx, grad_outputs, axes=None):
    """The masked leaves' gradients: the ``_vjp`` op, or under ``torch.func`` (whose wrapped
    tensors need a vmap rule) and for a batched call (``axes``) :class:`_EagerVJP`."""
    used = [g is not None for g in grad_outputs]
    if not any(used):
        return [None] * len(ctx.grad_mask), None, None, None
    saved = ctx.saved_tensors
    leaves, seed = list(saved[: ctx.n_leaves]), (saved[ctx.n_leaves :] or [None])[0]
    cotangents = [g for g in grad_outputs if g is not None]
    spec = _spec.parse(ctx.spec_text)
    mask = list(ctx.grad_mask)
    if axes is not None or torch._C._are_functorch_transforms_active():
        n = len(leaves)
        grads = _EagerVJP.apply(ctx.spec_text, mask, used, seed, axes, n, *leaves, *cotangents)
        if axes is not None:
            grads = _per_item(grads, axes, mask)
    else:
        grads = _OPS[(spec.op, "vjp")](leaves, seed, cotangents, ctx.spec_text, mask, used)
    inputs = [t for t, m in zip(leaves, ctx.grad_mask, strict=True) if m]
    grads = iter(_refuse_second_order(spec.label, list(grads), inputs))
    return [next(grads) if m else None for m in ctx.grad_mask], None, None, None


# --- eager calls: the same implementations, without torch's dispatcher ------------------------


def _vmap_rule(impl: Callable, in_dims, spec_text, grad_mask, seed, leaves) -> tuple:
    """``torch.func.vmap``'s rule for the twins: ONE jitted call of the JAX function under
    ``jax.vmap`` (:func:`_batched`), the batched leaves' batch dimension moved to the front;
    every output is batched at dimension 0 (gradients of shared leaves are per batch item)."""
    if in_dims[2] is not None:
        raise ValueError(
            f"space_torch_bridge.{_spec.parse(spec_text).label}: the solver seed cannot be "
            "vmapped; set one seed for the whole batch"
        )
    dims = in_dims[3:]
    if all(d is None for d in dims):
        outs = impl(list(leaves), seed, spec_text, grad_mask)
        return tuple(outs), (None,) * len(outs)
    moved = [t if d is None else t.movedim(d, 0) for t, d in zip(leaves, dims, strict=True)]
    axes = tuple(None if d is None else 0 for d in dims)
    # Through a Function, so that a transform outside the vmap (torch.func.grad, or plain
    # autograd) differentiates the batched call. Which leaves it differentiates shows only
    # here, on the unwrapped leaves: inside the vmap they do not require grad.
    outer = [torch.is_grad_enabled() and t.requires_grad for t in moved]
    mask = tuple(a or b for a, b in zip(grad_mask, outer, strict=True))
    batched = _BatchedLoss if impl is _loss_impl else _BatchedFunction
    outs = batched.apply(spec_text, mask, seed, axes, *moved)
    if impl is _loss_impl:  # the twin's outputs: the loss, then the gradients its mask asked for
        outs = [outs[0], *_per_item_masked(outs[1:], mask, grad_mask)]
    return tuple(outs), (0,) * len(outs)


def _per_item_masked(grads, mask, wanted) -> list:
    """The gradients (one per True in ``mask``) of the leaves True in ``wanted`` too."""
    it = iter(grads)
    picked = [(next(it), w) for m, w in zip(mask, wanted, strict=True) if m]
    return [g for g, w in picked if w]


class _EagerLoss(torch.autograd.Function):
    """A loss op's eager twin: :func:`_loss_impl` and :func:`_loss_backward` called directly.

    Going through ``torch.ops`` costs about 1 ms per call in eager mode (the dispatcher, the
    custom op's pytree flattening of arguments and gradients, its autograd wrapper); plain
    tensors outside any compilation, tracing or dispatch mode take this path instead, and so do
    ``torch.func`` transforms (``grad``; ``vmap`` through :func:`_vmap_rule`), which torch's
    generated custom-op autograd does not support (this form, with ``setup_context``, it does).
    Outputs: the loss, then the gradients (not differentiable; the wrapper returns the loss
    alone).
    """

    @staticmethod
    def forward(spec_text, grad_mask, seed, *leaves):
        return tuple(_loss_impl(list(leaves), seed, spec_text, grad_mask))

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec_text, grad_mask, seed, *leaves = inputs
        ctx.mark_non_differentiable(*output[1:])
        # No zero-filled cotangents for the gradient outputs: filling B x D zeros on every
        # backward woke torch's OpenMP workers, whose spinning slowed the next XLA call.
        ctx.set_materialize_grads(False)
        _loss_setup(ctx, (leaves, seed, spec_text, grad_mask), output)

    @staticmethod
    def backward(ctx, grad_output, *unused):
        grads = _loss_backward(ctx, (grad_output,))[0]
        return (None, None, None, *grads)

    @staticmethod
    def vmap(info, in_dims, spec_text, grad_mask, seed, *leaves):
        return _vmap_rule(_loss_impl, in_dims, spec_text, grad_mask, seed, leaves)


class _EagerFunction(torch.autograd.Function):
    """A function op's eager twin (:class:`_EagerLoss`); its backward runs the ``_vjp`` op
    (under ``torch.func``, :class:`_EagerVJP`)."""

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

    @staticmethod
    def vmap(info, in_dims, spec_text, grad_mask, seed, *leaves):
        return _vmap_rule(_function_impl, in_dims, spec_text, grad_mask, seed, leaves)


def _per_item(grads: Sequence[torch.Tensor], axes, grad_mask) -> list[torch.Tensor]:
    """Per-item gradients of a batched call, as gradients of its inputs: summed over the batch
    for a shared input (axis None), as they are for a batched one."""
    masked_axes = [a for a, m in zip(axes, grad_mask, strict=True) if m]
    return [g if a == 0 else g.sum(0) for g, a in zip(grads, masked_axes, strict=True)]


def _refuse_nested_vmap(info, in_dims, spec_text, *args):
    raise NotImplementedError(
        f"space_torch_bridge.{_spec.parse(spec_text).label}: nested torch.func.vmap is not "
        "supported through the bridge; vmap once over a stacked batch dimension, or use "
        "space_jax with jax.vmap"
    )


class _BatchedLoss(torch.autograd.Function):
    """The losses of a batch of calls (``torch.func.vmap`` over :class:`_EagerLoss`): one
    jitted ``jax.vmap`` call (:func:`_batched`). Outputs: the losses ``(N,)``, then the masked
    leaves' per-item gradients ``(N, ...)`` (not differentiable)."""

    @staticmethod
    def forward(spec_text, grad_mask, seed, axes, *leaves):
        return tuple(_loss_impl(list(leaves), seed, spec_text, grad_mask, axes))

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec_text, grad_mask, seed, axes, *leaves = inputs
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # as _EagerLoss
        ctx.axes = axes
        _loss_setup(ctx, (leaves, seed, spec_text, grad_mask), output)

    @staticmethod
    def backward(ctx, grad_output, *unused):
        grads = _loss_backward(ctx, (grad_output,), ctx.axes)[0]
        return (None, None, None, None, *grads)

    vmap = staticmethod(_refuse_nested_vmap)


class _BatchedFunction(torch.autograd.Function):
    """A function's results for a batch of calls (``torch.func.vmap`` over
    :class:`_EagerFunction`), every output batched at 0; its backward is one batched VJP."""

    @staticmethod
    def forward(spec_text, grad_mask, seed, axes, *leaves):
        return tuple(_function_impl(list(leaves), seed, spec_text, grad_mask, axes))

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec_text, grad_mask, seed, axes, *leaves = inputs
        ctx.axes = axes
        _function_setup(ctx, (leaves, seed, spec_text, grad_mask), output)

    @staticmethod
    def backward(ctx, *grad_outputs):
        grads = _function_backward(ctx, grad_outputs, ctx.axes)[0]
        return (None, None, None, None, *grads)

    vmap = staticmethod(_refuse_nested_vmap)


class _EagerVJP(torch.autograd.Function):
    """A function's VJP (:func:`_vjp_impl`) where its backward runs under ``torch.func``:
    ``torch.func.vmap(torch.func.grad(...))`` maps it with one batched JAX VJP; ``axes`` is
    None, or that of a batched call (:class:`_BatchedFunction`). First order only."""

    @staticmethod
    def forward(spec_text, grad_mask, used, seed, axes, n_leaves, *tensors):
        leaves, cotangents = list(tensors[:n_leaves]), list(tensors[n_leaves:])
        return tuple(_vjp_impl(leaves, seed, cotangents, spec_text, grad_mask, used, axes))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.label = _spec.parse(inputs[0]).label
        ctx.mark_non_differentiable(*output)

    @staticmethod
    def backward(ctx, *grad_outputs):
        _SecondOrderRefused.backward(ctx)

    @staticmethod
    def vmap(info, in_dims, spec_text, grad_mask, used, seed, axes, n_leaves, *tensors):
        if axes is not None or in_dims[3] is not None:
            _refuse_nested_vmap(info, in_dims, spec_text)
        dims = in_dims[6:]
        if all(d is None for d in dims):
            outs = _EagerVJP.apply(spec_text, grad_mask, used, seed, None, n_leaves, *tensors)
            return tuple(outs), (None,) * len(outs)
        moved = [
            (t.expand(info.batch_size, *t.shape) if i >= n_leaves else t)
            if d is None
            else t.movedim(d, 0)
            for i, (t, d) in enumerate(zip(tensors, dims, strict=True))
        ]
        leaf_axes = tuple(None if d is None else 0 for d in dims[:n_leaves])
        outs = _EagerVJP.apply(spec_text, grad_mask, used, seed, leaf_axes, n_leaves, *moved)
        return tuple(outs), (0,) * len(outs)


# Function.apply binds its arguments to forward's signature on every call (for setup_context);
# inspect.signature takes a precomputed __signature__ as it is, instead of rebuilding it (~20 us).
for _twin in (
    _EagerLoss,
    _EagerFunction,
    _BatchedLoss,
    _BatchedFunction,
    _EagerVJP,
    _SecondOrderRefused,
):
    _twin.forward.__signature__ = inspect.signature(_twin.forward)

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
    if not any(mask) and not torch._C._are_functorch_transforms_active():
        # nothing to differentiate, no torch.func transform: no autograd node at all
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
        "(Tensor[] leaves, Tensor? seed, Tensor[] cotangents, str spec, bool[] grad_mask, "
        "bool[] used) "
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
