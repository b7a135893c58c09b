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
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")


def pool(x: jax.typing.ArrayLike, n_bins: int, mode: str = "avg") -> jax.Array:
    """Adaptive average or max pooling to a fixed number of bins.

    Args:
      x: ``(B, C, H, W)`` fields (pooled to ``(B, C, n_bins, n_bins)``) or ``(B, S)`` series
        (pooled to ``(B, n_bins)``).
      n_bins: bins per spatial axis (static).
      mode: ``"avg"`` or ``"max"``.

    Returns:
      The pooled array.
    """
    _check_mode(mode)
    n_bins = check_positive_int(n_bins, "n_bins")
    x = as_float(x, "x")
    if x.ndim == 2:
        return _pool_last_axis(x, n_bins, mode)
    if x.ndim == 4:
        rows = _pool_last_axis(x, n_bins, mode)  # (B, C, H, n)
        return jnp.swapaxes(_pool_last_axis(jnp.swapaxes(rows, -1, -2), n_bins, mode), -1, -2)
    raise ValueError(f"x: expected 2 dims (B, S) or 4 dims (B, C, H, W), got shape {x.shape}")


def compute_Q(*fns: Callable, **named_fns: Callable) -> Callable[..., dict[str, Any]]:
    """A registry that computes several quantities from shared keyword arguments.

    Positional functions are named by ``__name__``. The returned callable takes keyword
    arguments and calls each function with only the parameters it declares.

    Raises:
      TypeError: two functions annotate one parameter name with different types.
    """
    registry: dict[str, Callable] = {getattr(f, "__name__", str(id(f))): f for f in fns}
    registry.update(named_fns)
    annotations: dict[str, tuple[str, Any]] = {}
    parameters: dict[str, list[str]] = {}
    for name, f in registry.items():
        if not callable(f):
            raise TypeError(f"compute_Q: {name!r} is not callable (got {type(f)})")
        params = inspect.signature(f).parameters
        parameters[name] = list(params)
        for p_name, param in params.items():
            if param.annotation is inspect.Parameter.empty:
                continue
            if p_name in annotations and annotations[p_name][1] != param.annotation:
                first, hint = annotations[p_name]
                raise TypeError(
                    f"compute_Q: parameter {p_name!r} is annotated {hint} by {first!r} "
                    f"but {param.annotation} by {name!r}"
                )
            annotations.setdefault(p_name, (name, param.annotation))

    def quantities(**kwargs) -> dict[str, Any]:
        return {
            name: f(**{p: kwargs[p] for p in parameters[name] if p in kwargs})
            for name, f in registry.items()
        }

    return quantities


def pool_quantities(
    quantities: Callable[..., dict[str, Any]],
    n_bins: int,
    mode: str,
    *,
    pool_fn: Callable = pool,
) -> Callable[..., dict[str, Any]]:
    """Wraps a :func:`compute_Q` registry so that every result is pooled with ``pool_fn``."""
    _check_mode(mode)
    n_bins = check_positive_int(n_bins, "n_bins")

    def pooled(**kwargs) -> dict[str, Any]:
        return {name: pool_fn(v, n_bins, mode) for name, v in quantities(**kwargs).items()}

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
