"""Pooling and the quantity registry, as spacelearn's ``spacelearn.data``.

``pool`` runs ``space_jax.pool`` on torch tensors as a torch custom op (differentiable;
``torch.compile`` traces it). ``compute_Q``, ``input_to_quantity``, ``ensure_dim`` and
``to_device`` are plain Python around the user's functions.

spacelearn's errors are kept where code may match them: ``pool`` raises
``ValueError("Invalid number of dimensions: ...")`` and ``ValueError("Invalid mode: ...")``,
``compute_Q`` raises ``TypeError("Type mismatch for argument 'x': ...")`` when it is built,
and ``input_to_quantity`` raises for a bad mode or rank when its result is *called*, as
spacelearn's does; each message continues with the bridge's detail.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch

import space_jax as _sj
from space_torch_bridge import _autograd
from space_torch_bridge._validate import check_mode, check_pool_rank, check_positive_int

__all__ = ["compute_Q", "ensure_dim", "input_to_quantity", "pool", "to_device"]

_autograd.register("pool", _sj.pool, loss=False)

ensure_dim = _sj.ensure_dim


def _pool(chunks: torch.Tensor, n_bins: int, mode: str, name: str, label: str) -> torch.Tensor:
    check_pool_rank(chunks, name, label)
    mode = check_mode(mode, label)
    n_bins = check_positive_int(n_bins, "n_bins", label)
    return _autograd.call(
        _sj.pool,
        (chunks,),
        names=(name,),
        label=label,
        op_name="pool",
        static={"n_bins": n_bins, "mode": mode, "name": name},
        output="T",
    )


def pool(chunks: torch.Tensor, n_bins: int, mode: str = "avg") -> torch.Tensor:
    """Adaptive pooling with PyTorch's adaptive windows (bin ``i`` of ``n`` over a length
    ``L`` covers ``[floor(i*L/n), ceil((i+1)*L/n))``), differentiable.

    Args:
      chunks: ``(B, C, H, W)`` fields, pooled to ``(B, C, n_bins, n_bins)``, or ``(B, S)``
        series, pooled to ``(B, n_bins)``.
      n_bins: bins per pooled axis, an int >= 1.
      mode: ``"avg"`` (default) or ``"max"``.

    Returns:
      The pooled tensor on ``chunks``' device with its dtype (equal to
      ``F.adaptive_avg_pool2d`` / ``adaptive_max_pool1d`` ..., as spacelearn's).

    Raises:
      ValueError: ``"Invalid number of dimensions: ..."`` for another rank, ``"Invalid mode:
        ..."`` for another mode (spacelearn's phrases, then the detail); ``n_bins < 1``.
      TypeError: a non-int ``n_bins``, a non-floating tensor.
    """
    return _pool(chunks, n_bins, mode, "chunks", "pool")


def _annotation_mismatch(registry: dict[str, Callable]) -> None:
    """spacelearn's check, with its message first: one parameter name annotated with two
    different types by two functions raises ``TypeError("Type mismatch for argument ...")``."""
    seen: dict[str, tuple[str, object]] = {}
    for name, f in registry.items():
        if not callable(f):
            continue  # space_jax.compute_Q refuses it with its own message
        for p_name, param in inspect.signature(f).parameters.items():
            hint = param.annotation
            if hint is inspect.Parameter.empty:
                continue
            if p_name in seen and seen[p_name][1] != hint:
                first, first_hint = seen[p_name]
                raise TypeError(
                    f"Type mismatch for argument '{p_name}': Expected {first_hint}, but {name} "
                    f"defined it as {hint}. compute_Q: {first!r} annotates {p_name!r} as "
                    f"{first_hint} and {name!r} as {hint}; use one type or rename one parameter"
                )
            seen.setdefault(p_name, (name, hint))


def compute_Q(*arg_functions: Callable, **kwarg_functions: Callable) -> Callable[..., dict]:
    """A registry that computes several quantities from shared keyword arguments.

    Args:
      *arg_functions: functions named by their ``__name__``.
      **kwarg_functions: functions under the given names.

    Returns:
      A callable taking keyword arguments only; it calls each function with just the
      parameters that function declares and returns ``{name: result}`` in registration
      order (positional functions first).

    Raises:
      TypeError: when built, if two functions annotate one parameter name with different
        types (``"Type mismatch for argument 'x': ..."``, spacelearn's phrase), and for what
        ``space_jax.compute_Q`` refuses (non-callables, clashing names).

    Differences from spacelearn: only two *different* annotations clash (spacelearn also
    raises when an unannotated parameter is annotated by a later function).
    """
    registry = {getattr(f, "__name__", str(id(f))): f for f in arg_functions}
    registry.update(kwarg_functions)
    _annotation_mismatch(registry)
    return _sj.compute_Q(*arg_functions, **kwarg_functions)


def input_to_quantity(
    n_bins: int, mode: str, *arg_functions: Callable, **kwarg_functions: Callable
) -> Callable[..., dict[str, torch.Tensor]]:
    """A :func:`compute_Q` registry whose results are pooled with :func:`pool`.

    Args:
      n_bins: bins per pooled axis of every quantity.
      mode: ``"avg"`` or ``"max"``.
      *arg_functions, **kwarg_functions: the quantity functions, as for :func:`compute_Q`;
        each must return a ``(B, C, H, W)`` or ``(B, S)`` tensor.

    Returns:
      A callable taking keyword arguments, returning ``{name: pooled tensor}``.

    As in spacelearn, ``n_bins`` and ``mode`` are checked when the result is called (with
    the quantity's name in the message), not when it is built; :func:`compute_Q`'s checks run
    when it is built.
    """
    quantities = compute_Q(*arg_functions, **kwarg_functions)

    def pooled(**kwargs) -> dict[str, torch.Tensor]:
        return {
            q: _pool(v, n_bins, mode, f"the result of quantity {q!r}", "input_to_quantity")
            for q, v in quantities(**kwargs).items()
        }

    return pooled


def to_device(
    func: Callable | None = None,
    *,
    device: str | torch.device = "cpu",
    targets: list[str] | None = None,
) -> Callable:
    """Decorator: moves tensor arguments to ``device`` with ``.to()`` before the call.

    Args:
      func: the function (omit it to use the decorator with arguments).
      device: the target device (default ``"cpu"``).
      targets: keyword arguments to move; positional tensors always move, keyword tensors
        only when named here (all when None).

    Usable bare (``@to_device``) or with arguments (``@to_device(device="cuda")``), as
    spacelearn's.
    """
    if func is None:
        return functools.partial(to_device, device=device, targets=targets)

    def move(t):
        return t.to(device) if isinstance(t, torch.Tensor) else t

    @functools.wraps(func)
    def wrapped(*args, **kwargs):
        args = tuple(move(a) for a in args)
        kwargs = {k: move(v) if targets is None or k in targets else v for k, v in kwargs.items()}
        return func(*args, **kwargs)

    return wrapped
