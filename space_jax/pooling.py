"""Adaptive pooling of targets and the registry that turns inputs into pooled quantities.

Windows follow PyTorch's adaptive pooling exactly: bin ``i`` of ``n`` over a length ``L``
covers ``[floor(i * L / n), ceil((i + 1) * L / n))``. Average pooling is a product with a fixed
``(L, n)`` averaging matrix; both modes are separable, so 2-D pooling is two 1-D passes.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import as_float, check_positive_int

__all__ = [
    "compute_Q",
    "ensure_dim",
    "input_to_quantity",
    "pool",
    "pool_quantities",
    "to_device",
]

_MODES = ("avg", "max")


def _windows(length: int, n: int) -> list[tuple[int, int]]:
    return [((i * length) // n, -((-(i + 1) * length) // n)) for i in range(n)]


def _pool_last_axis(x: jax.Array, n: int, mode: str) -> jax.Array:
    windows = _windows(x.shape[-1], n)
    if mode == "avg":
        weights = np.zeros((x.shape[-1], n))
        for i, (start, stop) in enumerate(windows):
            weights[start:stop, i] = 1.0 / (stop - start)
        return jnp.matmul(x, jnp.asarray(weights, x.dtype), precision=jax.lax.Precision.HIGHEST)
    return jnp.stack([x[..., start:stop].max(axis=-1) for start, stop in windows], axis=-1)


def _check_mode(mode: str) -> None:
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")


def pool(x: jax.typing.ArrayLike, n_bins: int, mode: str = "avg", *, name: str = "x") -> jax.Array:
    """Adaptive average or max pooling to a fixed number of bins.

    Args:
      x: ``(B, C, H, W)`` fields (pooled to ``(B, C, n_bins, n_bins)``) or ``(B, S)`` series
        (pooled to ``(B, n_bins)``); the pooled axes must not be empty.
      n_bins: bins per spatial axis (static).
      mode: ``"avg"`` or ``"max"``.
      name: what to call ``x`` in error messages (``"Y['a']"``).

    Returns:
      The pooled array.
    """
    _check_mode(mode)
    n_bins = check_positive_int(n_bins, "n_bins")
    x = as_float(x, name)
    if x.ndim not in (2, 4):
        raise ValueError(
            f"{name}: expected 2 dims (B, S) or 4 dims (B, C, H, W), got shape {x.shape}"
        )
    if any(n == 0 for n in x.shape[2 if x.ndim == 4 else 1 :]):
        raise ValueError(f"{name}: cannot pool an empty axis, got shape {x.shape}")
    if x.ndim == 2:
        return _pool_last_axis(x, n_bins, mode)
    rows = _pool_last_axis(x, n_bins, mode)  # (B, C, H, n)
    return jnp.swapaxes(_pool_last_axis(jnp.swapaxes(rows, -1, -2), n_bins, mode), -1, -2)


def compute_Q(*fns: Callable, **named_fns: Callable) -> Callable[..., dict[str, Any]]:
    """A registry that computes several quantities from shared keyword arguments.

    Positional functions are named by ``__name__``, keyword ones by their keyword. The returned
    callable takes keyword arguments and calls each function with the parameters it declares;
    a function with a ``**kwargs`` parameter receives every keyword argument of the call.

    Raises:
      TypeError: a function is not callable, has no readable signature, has positional-only
        parameters (quantities are called by keyword), or is passed positionally without a
        usable ``__name__`` (a ``functools.partial``); or two functions annotate one parameter
        name with different types ("Type mismatch for argument 'x'"). When the registry is
        called: a required parameter of a function is missing from the call.
      ValueError: two functions get the same name (two lambdas, both ``'<lambda>'``, or a
        positional function and a keyword of its name): one would silently replace the other.
    """
    registry: dict[str, Callable] = {}
    for f in fns:
        if not callable(f):
            raise TypeError(f"compute_Q: positional argument {f!r} is not callable")
        name = getattr(f, "__name__", None)
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"compute_Q: {f!r} has no __name__ to name its quantity; pass it by keyword, "
                "compute_Q(name=f)"
            )
        if name in registry:
            raise ValueError(
                f"compute_Q: two positional functions are both named {name!r}; one would "
                f"replace the other. Name them by keyword: compute_Q(a=f, b=g)"
            )
        registry[name] = f
    for name, f in named_fns.items():
        if name in registry:
            raise ValueError(
                f"compute_Q: quantity {name!r} is given both positionally (as the function "
                f"named {name!r}) and by keyword; one would replace the other"
            )
        registry[name] = f
    annotations: dict[str, tuple[str, Any]] = {}
    parameters: dict[str, list[str]] = {}
    required: dict[str, list[str]] = {}
    takes_all: dict[str, bool] = {}
    for name, f in registry.items():
        if not callable(f):
            raise TypeError(f"compute_Q: {name!r} is not callable (got {type(f)})")
        try:
            params = inspect.signature(f).parameters
        except (TypeError, ValueError) as exc:
            raise TypeError(f"compute_Q: cannot read the signature of {name!r} ({exc})") from None
        kinds = {p: param.kind for p, param in params.items()}
        positional_only = [p for p, k in kinds.items() if k is inspect.Parameter.POSITIONAL_ONLY]
        if positional_only:
            raise TypeError(
                f"compute_Q: {name!r} has positional-only parameters {positional_only}; "
                "quantities are called with keyword arguments"
            )
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        parameters[name] = [p for p, k in kinds.items() if k not in variadic]
        required[name] = [
            p
            for p, param in params.items()
            if param.kind not in variadic and param.default is inspect.Parameter.empty
        ]
        takes_all[name] = inspect.Parameter.VAR_KEYWORD in kinds.values()
        for p_name, param in params.items():
            if param.annotation is inspect.Parameter.empty or param.kind in variadic:
                continue
            if p_name in annotations and annotations[p_name][1] != param.annotation:
                first, hint = annotations[p_name]
                raise TypeError(
                    f"compute_Q: Type mismatch for argument {p_name!r}: parameter {p_name!r} "
                    f"is annotated {hint} by {first!r} but {param.annotation} by {name!r}"
                )
            annotations.setdefault(p_name, (name, param.annotation))

    def quantities(**kwargs) -> dict[str, Any]:
        out = {}
        for name, f in registry.items():
            missing = [p for p in required[name] if p not in kwargs]
            if missing:
                raise TypeError(
                    f"compute_Q: quantity {name!r} needs the keyword arguments {missing}, "
                    f"which the call did not pass (it passed {list(kwargs)})"
                )
            if takes_all[name]:
                out[name] = f(**kwargs)
            else:
                out[name] = f(**{p: kwargs[p] for p in parameters[name] if p in kwargs})
        return out

    return quantities


def pool_quantities(
    quantities: Callable[..., dict[str, Any]],
    n_bins: int,
    mode: str,
    *,
    pool_fn: Callable = pool,
) -> Callable[..., dict[str, Any]]:
    """Wraps a :func:`compute_Q` registry so that every result is pooled with ``pool_fn``.

    A 1-D result ``(B,)`` is read as the series ``(B, 1)``.
    """
    _check_mode(mode)
    n_bins = check_positive_int(n_bins, "n_bins")

    def one(name: str, v: Any) -> Any:
        if getattr(v, "ndim", None) == 1:
            v = v.reshape(v.shape[0], 1)
        if pool_fn is pool:
            return pool(v, n_bins, mode, name=f"quantity {name!r}")
        return pool_fn(v, n_bins, mode)

    def pooled(**kwargs) -> dict[str, Any]:
        return {name: one(name, v) for name, v in quantities(**kwargs).items()}

    return pooled


def input_to_quantity(
    n_bins: int, mode: str, *fns: Callable, **named_fns: Callable
) -> Callable[..., dict[str, jax.Array]]:
    """:func:`compute_Q` whose results are pooled to ``n_bins`` with :func:`pool`.

    Example::

      quantities = input_to_quantity(4, "avg", field=lambda u: u, energy=energy_fn)
      Y = quantities(u=batch)  # {"field": (B, 1, 4, 4), "energy": ...}
    """
    return pool_quantities(compute_Q(*fns, **named_fns), n_bins, mode)


def _expand(x: Any, dims: int) -> Any:
    ndim = getattr(x, "ndim", None)
    if isinstance(ndim, int) and hasattr(x, "reshape") and ndim < dims:
        return x.reshape((1,) * (dims - ndim) + tuple(x.shape))
    return x


def ensure_dim(
    func: Callable | None = None, *, dims: int, targets: list[str] | None = None
) -> Callable:
    """Decorator: prepends unit dims to array arguments with fewer than ``dims`` dims.

    Works with any array type that has ``ndim`` and ``reshape`` (JAX, NumPy, torch). Positional
    arrays are always expanded; keyword arrays only when named in ``targets`` (all when
    ``targets`` is None or empty). Usable bare-with-arguments (``@ensure_dim(dims=4)``) or as
    ``ensure_dim(f, dims=4)``.
    """
    dims = check_positive_int(dims, "dims")
    if func is None:
        return functools.partial(ensure_dim, dims=dims, targets=targets)

    @functools.wraps(func)
    def wrapped(*args, **kwargs):
        args = tuple(_expand(a, dims) for a in args)
        kwargs = {
            k: _expand(v, dims) if not targets or k in targets else v for k, v in kwargs.items()
        }
        return func(*args, **kwargs)

    return wrapped


def to_device(
    func: Callable | None = None, *, device: str | jax.Device = "cpu", targets=None
) -> Callable:
    """Decorator: puts array arguments on ``device`` (a ``jax.Device`` or a platform name).

    Positional arrays always move; keyword arrays only when named in ``targets`` (all when
    None).
    """
    if func is None:
        return functools.partial(to_device, device=device, targets=targets)

    def move(x):
        if isinstance(x, jax.Array | np.ndarray):
            target = jax.devices(device)[0] if isinstance(device, str) else device
            return jax.device_put(x, target)
        return x

    @functools.wraps(func)
    def wrapped(*args, **kwargs):
        args = tuple(move(a) for a in args)
        kwargs = {k: move(v) if targets is None or k in targets else v for k, v in kwargs.items()}
        return func(*args, **kwargs)

    return wrapped
