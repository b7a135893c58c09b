"""Shared fixtures: scoped float64, quiet reference calls, random problems."""

from __future__ import annotations

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Runs a test in float32, then in float64 with x64 enabled only for that test."""
    if request.param == "float64":
        with jax.enable_x64(True):
            yield np.float64
    else:
        yield np.float32


@contextlib.contextmanager
def quiet():
    """spacelearn prints from library code; keep test output clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def problem(seed: int = 0, B: int = 64, D: int = 16, dims=None, dtype=np.float64):
    """Latents with structure plus targets that depend on them linearly and through noise."""
    rng = np.random.default_rng(seed)
    dims = dims or {"field": (1, 4, 4), "energy": (3,)}
    Z = rng.normal(size=(B, D)) * np.linspace(2.0, 0.5, D)
    Y = {}
    for i, (q, shape) in enumerate(dims.items()):
        m = int(np.prod(shape))
        mix = rng.normal(size=(D, m))
        Y[q] = (Z @ mix + 0.3 * rng.normal(size=(B, m)) + i).reshape((B, *shape))
    return Z.astype(dtype), {q: y.astype(dtype) for q, y in Y.items()}


def _convert(tree, leaf):
    # jax.tree_util.tree_map would sort dict keys; the quantity order is the dict order.
    if isinstance(tree, dict):
        return {k: _convert(v, leaf) for k, v in tree.items()}
    if isinstance(tree, tuple | list):
        return type(tree)(_convert(v, leaf) for v in tree)
    return None if tree is None else leaf(tree)


def to_jax(tree):
    return _convert(tree, jnp.asarray)


def to_torch(tree):
    import torch

    return _convert(tree, lambda x: torch.from_numpy(np.array(x)))


def random_bases(rng, D: int, ks: dict, dtype=np.float64) -> dict:
    """Mutually orthogonal orthonormal bases (one QR, split by rows)."""
    q, _ = np.linalg.qr(rng.normal(size=(D, sum(ks.values()))))
    out, start = {}, 0
    for name, k in ks.items():
        out[name] = q[:, start : start + k].T.astype(dtype)
        start += k
    return out
