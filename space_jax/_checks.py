"""Argument checks shared by the public functions.

Everything here looks only at shapes, dtypes and key sets, which are static under ``jax.jit``,
so the checks run at trace time and cost nothing at run time. Value checks (NaN/inf) are only
done by the host-level entry points, through :func:`check_finite`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "as_float",
    "check_finite",
    "check_keys",
    "check_latents",
    "check_positive_int",
    "check_threshold",
    "flatten_target",
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
    if y.ndim == 1:
        return y[:, None]
    return y.reshape(y.shape[0], -1)


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
    """Checks a variance fraction in ``(0, 1]``."""
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
