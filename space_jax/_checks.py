"""Argument checks shared by the public functions.

Everything here looks only at shapes, dtypes and key sets, which are static under ``jax.jit``,
so the checks run at trace time and cost nothing at run time. Value checks (NaN/inf) are only
done by the host-level entry points, through :func:`check_finite`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "as_float",
    "check_finite",
    "check_nonempty_target",
    "check_keys",
    "check_latents",
    "check_loss_weights",
    "check_positive_int",
    "check_threshold",
    "flatten_target",
    "half_in_float32",
]


def as_float(x, name: str) -> jax.Array:
    """Converts ``x`` to a JAX array and refuses non-floating dtypes."""
    if isinstance(x, Mapping):
        raise TypeError(f"{name}: expected an array, got a mapping with keys {list(x)}")
    arr = jnp.asarray(x)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating-point array, got dtype {arr.dtype}")
    return arr


def check_latents(Z, name: str = "Z", *, min_batch: int = 2) -> jax.Array:
    """Checks that latents are a floating ``(B, D)`` array with ``B >= min_batch``.

    Centering needs two samples; a chunk of statistics to merge needs one (``min_batch=1``).
    """
    Z = as_float(Z, name)
    if Z.ndim != 2:
        raise ValueError(f"{name}: expected latents of shape (B, D), got shape {Z.shape}")
    if Z.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (B=0); a chunk needs at least one sample")
    if Z.shape[0] < min_batch:
        raise ValueError(
            f"{name}: centering needs a batch of at least 2 samples, got B={Z.shape[0]}"
        )
    if Z.shape[1] < 1:
        raise ValueError(f"{name}: expected a latent size D >= 1, got shape {Z.shape}")
    return Z


def flatten_target(y, batch: int, quantity: str, name: str = "Y") -> jax.Array:
    """Returns a target as ``(B, m)``: 1-D becomes ``(B, 1)``, more than 2 dims are flattened."""
    y = as_float(y, f"{name}[{quantity!r}]")
    if y.ndim == 0:
        raise ValueError(f"{name}[{quantity!r}]: expected a batch of targets, got a scalar")
    if y.shape[0] != batch:
        raise ValueError(
            f"{name}[{quantity!r}]: batch size {y.shape[0]} does not match the latents' B={batch}"
        )
    check_nonempty_target(y, f"{name}[{quantity!r}]")
    if y.ndim == 1:
        return y[:, None]
    return y.reshape(y.shape[0], -1)


def check_nonempty_target(y, name: str) -> None:
    """Refuses a target with no values per sample (a ``(B, 0)`` or ``(B, C, 0, W)`` shape)."""
    if any(n == 0 for n in y.shape[1:]):
        raise ValueError(
            f"{name}: empty target of shape {tuple(y.shape)}; a quantity needs at least one "
            "value per sample"
        )


HALF_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def half_in_float32(fn):
    """Decorator: half-precision (float16, bfloat16) array arguments, also inside dicts, are
    computed in float32 (LAPACK has no half-precision kernels, and Gram matrices overflow
    float16's range at ordinary sizes); floating results are cast back to the first such
    argument's dtype. A concrete result that the half dtype cannot hold (finite in float32,
    infinite once cast) raises ``ValueError`` naming the half-precision arguments. Other calls
    pass through unchanged."""
    signature = inspect.signature(fn)

    def is_half(x) -> bool:
        dtype = getattr(x, "dtype", None)
        return dtype is not None and not isinstance(x, Mapping) and jnp.dtype(dtype) in HALF_DTYPES

    def holds_half(a) -> bool:
        return is_half(a) or (isinstance(a, Mapping) and any(is_half(v) for v in a.values()))

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        leaves = [
            x
            for a in (*args, *kwargs.values())
            for x in (a.values() if isinstance(a, Mapping) else (a,))
        ]
        half = next((jnp.dtype(x.dtype) for x in leaves if is_half(x)), None)
        if half is None:
            return fn(*args, **kwargs)

        def up(a):
            if isinstance(a, Mapping):
                return {k: up(v) for k, v in a.items()}
            return jnp.asarray(a, jnp.float32) if is_half(a) else a

        out = fn(*(up(a) for a in args), **{k: up(v) for k, v in kwargs.items()})

        def down(x):
            if not (
                isinstance(x, jax.Array | np.ndarray) and jnp.issubdtype(x.dtype, jnp.floating)
            ):
                return x
            y = x.astype(half)
            if not isinstance(x, jax.core.Tracer) and not bool(
                jnp.all(jnp.isfinite(y) | ~jnp.isfinite(x))
            ):
                bound = signature.bind_partial(*args, **kwargs).arguments
                names = [n for n, a in bound.items() if holds_half(a)]
                raise ValueError(
                    f"{fn.__name__}: the result overflows {half} (it was computed in float32); "
                    f"pass {', '.join(names)} as float32"
                )
            return y

        return jax.tree_util.tree_map(down, out)

    return wrapped


def check_keys(reference_name: str, reference: Mapping, other_name: str, other: Mapping) -> None:
    """Checks that two dicts of per-quantity values have the same key set."""
    if not isinstance(other, Mapping):
        raise TypeError(f"{other_name}: expected a dict of per-quantity arrays, got {type(other)}")
    if set(reference) != set(other):
        missing = [k for k in reference if k not in other]
        extra = [k for k in other if k not in reference]
        raise ValueError(
            f"{other_name}: quantities must match {reference_name}'s {list(reference)}; "
            f"missing {missing}, unexpected {extra}"
        )


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """Checks a static integer hyperparameter (``k``, ``n_bins``, ...)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def check_threshold(value, name: str) -> float:
    """Checks a variance fraction in ``(0, 1]`` (a bool is refused, as for an int ``k``)."""
    if isinstance(value, str | bytes):
        raise TypeError(f"{name}: expected a float in (0, 1], got the string {value!r}")
    if isinstance(value, bool | np.bool_) or (
        getattr(value, "dtype", None) is not None and jnp.dtype(value.dtype) == jnp.bool_
    ):
        raise TypeError(f"{name}: expected a float in (0, 1], got the bool {value!r}")
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a float in (0, 1], got {value!r}") from None
    if not 0.0 < t <= 1.0:
        raise ValueError(f"{name}: expected a float in (0, 1], got {t}")
    return t


def check_finite(x, name: str) -> None:
    """Eager NaN/inf check for host-level entry points (never call under ``jit``)."""
    if isinstance(x, jax.core.Tracer):
        return
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        # A global array spread over several processes: reduce it where it lives (one
        # all-reduce of a flag) instead of fetching values this process does not hold.
        finite = bool(_all_finite(x))
    else:
        finite = bool(np.all(np.isfinite(np.asarray(x))))
    if not finite:
        raise ValueError(f"{name}: contains NaN or infinity")


@jax.jit
def _all_finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x))


LOSS_TERMS = ("alignment", "disentanglement", "isotropy", "stability")


def check_loss_weights(weights, name: str = "weights") -> tuple:
    """The four term weights of ``combined_loss`` from ``None`` (1 each), a sequence (or array)
    of exactly four, or a dict by term name (missing terms weigh 1)."""
    if weights is None:
        return (1.0,) * 4
    if isinstance(weights, Mapping):
        unknown = [k for k in weights if k not in LOSS_TERMS]
        if unknown:
            raise ValueError(
                f"{name}: unknown loss terms {unknown}; expected keys among {LOSS_TERMS}"
            )
        return tuple(weights.get(k, 1.0) for k in LOSS_TERMS)
    if isinstance(weights, str | bytes) or not hasattr(weights, "__len__"):
        raise TypeError(
            f"{name}: expected a LossWeights, a sequence of 4 weights {LOSS_TERMS} or a dict "
            f"by term name, got {weights!r}"
        )
    shape = tuple(jnp.shape(weights)) if hasattr(weights, "ndim") else (len(weights),)
    if shape != (4,):
        raise ValueError(
            f"{name}: expected exactly 4 weights {LOSS_TERMS} (or a dict by term name), got "
            f"shape {shape}: {weights!r}"
        )
    return tuple(weights[i] for i in range(4))
