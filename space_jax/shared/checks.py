"""Trace-time checks of what training is given: model names, parameters and aligned data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .config import FIELDS, Params, ProjectionConfig

__all__ = ["check_data", "check_input_dim", "input_dims"]


def check_input_dim(name: Any, n: Any) -> int:
    if not isinstance(name, str) or not name:
        raise TypeError(f"model names must be non-empty strings, got {name!r}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"model {name!r}: input_dim must be an int >= 1, got {n!r}")
    return int(n)


def input_dims(params: Params) -> dict[str, int]:
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a dict of per-model parameters, got {type(params)}")
    dims, d = {}, None
    for name, entry in params.items():
        if not isinstance(entry, Mapping) or set(entry) != set(FIELDS):
            raise ValueError(f"params[{name!r}]: expected a dict with keys {FIELDS}")
        n, d = entry["projection"].shape[0], d or entry["projection"].shape[1]
        shapes = {"projection": (n, d), "reconstruction": (d, n), "mean": (n,), "scale": (n,)}
        for field, shape in shapes.items():
            if jnp.shape(entry[field]) != shape:
                raise ValueError(
                    f"params[{name!r}][{field!r}]: expected shape {shape} (input size {n}, "
                    f"latent size {d}), got {jnp.shape(entry[field])}"
                )
        dims[name] = n
    return dims


def check_data(
    data: Mapping[str, ArrayLike], dims: Mapping[str, int], config: ProjectionConfig
) -> dict[str, jax.Array]:
    """Shape checks (trace-time): the seed's four errors, then ranks, sizes and batch size."""
    if not isinstance(data, Mapping):
        raise TypeError(f"data: expected a dict of model name -> samples, got {type(data)}")
    if len(data) < 2:
        raise ValueError(
            f"data: training needs aligned samples from at least two models, got {list(data)}"
        )
    xs: dict[str, jax.Array] = {}
    first = None
    for name, x in data.items():
        if name not in dims:
            raise KeyError(f"data: model {name!r} is not registered; registered: {list(dims)}")
        x = jnp.asarray(x)
        if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
            raise TypeError(f"data[{name!r}]: expected real numbers, got dtype {x.dtype}")
        if x.ndim != 2:
            raise ValueError(
                f"data[{name!r}]: expected a 2-D array (n_samples, {dims[name]}), "
                f"got shape {x.shape}"
            )
        if x.shape[1] != dims[name]:
            raise ValueError(
                f"data[{name!r}]: expected feature length {dims[name]} (the model's registered "
                f"input_dim), got {x.shape[1]}"
            )
        if first is not None and x.shape[0] != xs[first].shape[0]:
            raise ValueError(
                f"data[{name!r}]: mismatched sample counts: expected {xs[first].shape[0]} "
                f"aligned samples (as data[{first!r}]), got {x.shape[0]}"
            )
        first = first or name
        xs[name] = x
    B = xs[first].shape[0]
    if B == 0:
        raise ValueError("data: no training samples (every model has 0 rows)")
    if config.objective == "invariant" and B < 2:
        raise ValueError(f"data: the 'invariant' objective needs at least 2 samples, got {B}")
    bs = config.batch_size
    if bs is not None and bs > B:
        raise ValueError(f"config.batch_size={bs} exceeds the {B} training samples")
    if bs is not None and bs < 2 and config.objective == "invariant":
        raise ValueError("config.batch_size: the 'invariant' objective needs batches of >= 2")
    return xs
