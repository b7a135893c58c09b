"""Sizing functions: parity with spacelearn, traced twins, bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import spacelearn
from conftest import quiet, to_jax, to_torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from spacelearn import optim as ref_optim

import space_jax as sj


def targets(seed=0, B=80, dtype=np.float64):
    """Targets with decaying spectra so the k rule has something to find (fewer than 10^5
    elements, where spacelearn's "auto" is still an exact SVD)."""
    rng = np.random.default_rng(seed)
    out = {}
    for q, shape, decay in [("u", (1, 12, 12), 0.6), ("grad", (30,), 0.8), ("e", (), 1.0)]:
        m = int(np.prod(shape)) or 1
        basis = rng.normal(size=(m, m))
        scores = rng.normal(size=(B, m)) * decay ** np.arange(m)
        out[q] = (scores @ basis).reshape((B, *shape)).astype(dtype)
    return out


@pytest.mark.parametrize(
    "threshold, default, per_quantity",
    [(0.9, None, True), (0.5, None, False), ({"u": 0.99}, 0.7, True), ({"grad": 0.8}, None, True)],
)
def test_k_per_q_matches_spacelearn(threshold, default, per_quantity, dtype):
    Y = targets(dtype=dtype)
    got = sj.k_per_q(to_jax(Y), threshold, default_threshold=default, per_quantity=per_quantity)
    want = ref_optim.k_per_q(
        to_torch(Y), threshold, default_threshold=default, per_quantity=per_quantity
    )
    assert got == want


@pytest.mark.parametrize(
    "max_bins, threshold, default, per_quantity",
    [(16, 0.95, None, False), (4, 0.99, None, True), (16, {"u": 0.5}, 0.9, True)],
)
def test_optimal_bins_matches_spacelearn(max_bins, threshold, default, per_quantity):
    Y = targets(1)
    del Y["e"]  # spacelearn's optimal_bins fails on 1-D targets (ours reads them as (B, 1))
    got = sj.optimal_bins(
        to_jax(Y), max_bins, threshold, default_threshold=default, per_quantity=per_quantity
    )
    with quiet():
        want = ref_optim.optimal_bins(
            to_torch(Y), max_bins, threshold, default_threshold=default, per_quantity=per_quantity
        )
    assert got == want


@pytest.mark.parametrize("pool_per_q", [False, True])
@pytest.mark.parametrize("k_per_q", [False, True])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_solve_dims_matches_spacelearn(pool_per_q, k_per_q, mode):
    Y = targets(2)
    Y = {"u": Y["u"], "grad": Y["grad"]}  # pool takes (B, S) or (B, C, H, W)
    kwargs = dict(pooling_mode=mode, pool_per_quantity=pool_per_q, k_per_quantity=k_per_q)
    got = sj.solve_dims(to_jax(Y), 8, 0.9, {"u": 0.95}, k_default_threshold=0.8, **kwargs)
    with quiet():
        want = spacelearn.solve_dims(
            to_torch(Y), 8, 0.9, {"u": 0.95}, k_default_threshold=0.8, **kwargs
        )
    assert got == want


def test_explained_rank_is_traced_and_vmaps_over_thresholds():
    y = jnp.asarray(targets(3)["grad"])
    thresholds = jnp.linspace(0.05, 1.0, 12)
    ranks = jax.jit(jax.vmap(sj.explained_rank, in_axes=(None, 0)))(y, thresholds)
    assert ranks.dtype == jnp.int32
    expected = [sj.k_per_q({"g": y}, float(t))["g"] for t in thresholds]
    np.testing.assert_array_equal(ranks, expected)
    assert np.all(np.diff(np.asarray(ranks)) >= 0)
    np.testing.assert_array_equal(sj.bins_for_modes(jnp.array([1, 4, 5, 400]), 16), [2, 2, 3, 16])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    B=st.integers(2, 30),
    m=st.integers(1, 12),
    t=st.floats(0.01, 1.0),
)
@example(seed=0, B=2, m=1, t=1.0)  # where spacelearn's count gives m + 1
@example(seed=5609, B=4, m=2, t=1.0)
def test_explained_rank_matches_svd_rule(seed, B, m, t):
    y = np.random.default_rng(seed).normal(size=(B, m))
    s2 = np.linalg.svd(y - y.mean(0), compute_uv=False) ** 2
    cumulative = np.cumsum(s2 / (s2.sum() + 1e-8))
    # Counting is discontinuous: skip draws that sit on the threshold within rounding.
    if np.min(np.abs(cumulative - t)) > 1e-9:
        with jax.enable_x64(True):
            got = int(sj.explained_rank(jnp.asarray(y), t))
        # spacelearn's count, clamped to [1, m] (it can give m + 1 at t = 1.0; ours cannot)
        assert got == min(int(np.sum(cumulative < t)) + 1, m)


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    shape=st.sampled_from([(512, 256), (1024, 300), (300, 400)]),
    modes=st.integers(1, 40),
    t=st.floats(0.05, 0.99),
)
def test_explained_rank_matches_svd_rule_at_the_tridiagonal_route(seed, shape, modes, t):
    """From 256 columns (or samples, for the ``B x B`` Gram) the spectrum comes from the
    tridiagonal route (``space_jax._top_eigh``): the rank still equals the SVD rule's, in
    float32, on targets of a few modes plus noise (the usual sizing problem)."""
    rng = np.random.default_rng(seed)
    B, m = shape
    y = rng.normal(size=(B, modes)) * np.geomspace(10, 1, modes) @ rng.normal(size=(modes, m))
    y = y + 0.05 * rng.normal(size=(B, m))
    s2 = np.linalg.svd(y - y.mean(0), compute_uv=False) ** 2
    cumulative = np.cumsum(s2 / s2.sum())
    # float32 spectra carry ~1e-6 relative error: skip draws that sit on the threshold.
    if np.min(np.abs(cumulative - t)) > 1e-4:
        got = int(sj.explained_rank(jnp.asarray(y, jnp.float32), t))
        assert got == min(int(np.sum(cumulative < t)) + 1, m)


@pytest.mark.parametrize(
    "k, kwargs, expected",
    [
        (4, dict(Q=6), math.ceil(24 / 0.7)),
        ({"a": 4, "b": 6}, dict(free_frac=0.0), 10),
        (4, dict(Q=6, num_heads=8), 40),
        ({"a": 3}, dict(free_frac=0.5, num_heads=4), 8),
    ],
)
def test_minimal_latent_dim(k, kwargs, expected):
    assert sj.minimal_latent_dim(k, **kwargs) == expected
    with quiet():
        assert ref_optim.minimal_latent_dim(k, **kwargs) == expected


def test_one_dimensional_targets_are_one_column():
    y = jnp.asarray(targets(5)["e"])
    assert sj.optimal_bins({"e": y}, per_quantity=True) == {"e": 2}
    assert sj.k_per_q({"e": y}) == sj.k_per_q({"e": y[:, None]}) == {"e": 1}


def test_align_latent_dim():
    assert [sj.align_latent_dim(d, 8) for d in (1, 8, 9, 16)] == [8, 8, 16, 16]
    assert sj.align_latent_dim(7, 1) == 7


def test_bad_input():
    Y = to_jax(targets(4))
    with pytest.raises(ValueError, match=r"threshold: expected a float in \(0, 1\], got 1.5"):
        sj.k_per_q(Y, 1.5)
    with pytest.raises(ValueError, match=r"threshold\['u'\]: expected a float in \(0, 1\], got 0"):
        sj.k_per_q(Y, {"u": 0.0})
    with pytest.raises(ValueError, match=r"default_threshold: expected a float in \(0, 1\]"):
        sj.optimal_bins(Y, 8, {"u": 0.9}, default_threshold=-1)
    with pytest.raises(ValueError, match=r"threshold: thresholds for unknown quantities \['v'\]"):
        sj.k_per_q(Y, {"v": 0.9})
    with pytest.raises(ValueError, match=r"Y\['u'\]: contains NaN or infinity"):
        sj.k_per_q({**Y, "u": Y["u"].at[0, 0, 0, 0].set(jnp.nan)})
    with pytest.raises(ValueError, match=r"Y\['grad'\]: contains NaN or infinity"):
        sj.solve_dims({"grad": Y["grad"].at[3, 1].set(jnp.inf)}, 8, 0.9, 0.9)
    with pytest.raises(ValueError, match=r"Y\['e'\]: expected a batch of at least 2 samples"):
        sj.k_per_q({"e": Y["e"][:1]})
    with pytest.raises(TypeError, match=r"Y\['u'\]: expected a floating-point array"):
        sj.optimal_bins({"u": jnp.ones((4, 3), jnp.int32)})
    with pytest.raises(ValueError, match="max_bins: expected an int >= 1, got 0"):
        sj.optimal_bins(Y, 0)
    with pytest.raises(ValueError, match=r"mode: expected one of \('avg', 'max'\), got 'sum'"):
        sj.solve_dims({"grad": Y["grad"]}, 8, 0.9, 0.9, pooling_mode="sum")
    with pytest.raises(ValueError, match=r"free_frac: expected a float in \[0, 1\), got 1.0"):
        sj.minimal_latent_dim(4, Q=2, free_frac=1.0)
    with pytest.raises(ValueError, match="Q: required when k is an int"):
        sj.minimal_latent_dim(4)
    with pytest.raises(ValueError, match="num_heads: expected an int >= 1, got 0"):
        sj.minimal_latent_dim(4, Q=2, num_heads=0)
    with pytest.raises(ValueError, match="dim: expected an int >= 1, got 0"):
        sj.align_latent_dim(0, 4)
    with pytest.raises(ValueError, match=r"k\['a'\]: expected an int >= 1, got 0"):
        sj.minimal_latent_dim({"a": 0})
    with pytest.raises(ValueError, match=r"g: expected a square Gram matrix \(m, m\), got"):
        sj.explained_rank_from_gram(jnp.ones((2, 3, 3)), 0.9)


@pytest.mark.parametrize("pool_per_q, k_per_q", [(False, False), (True, True)])
def test_solve_dims_from_one_gram_per_target_equals_pooling_the_data(pool_per_q, k_per_q):
    # Average pooling is linear: the pooled spectrum is that of P.T G P, so solve_dims sizes the
    # subspaces from the Gram matrices that sized the grid. Same result as pooling the data.
    rng = np.random.default_rng(3)
    B = 300
    Y = {
        "u": (rng.normal(size=(B, 6)) @ rng.normal(size=(6, 144))).reshape(B, 1, 12, 12),
        "s": rng.normal(size=(B, 40)) * 0.7 ** np.arange(40),
    }
    got = sj.solve_dims(
        to_jax(Y), 6, 0.9, 0.8, pool_per_quantity=pool_per_q, k_per_quantity=k_per_q
    )
    n = sj.optimal_bins(to_jax(Y), 6, 0.9, per_quantity=True)
    n = n if pool_per_q else dict.fromkeys(Y, max(n.values()))
    pooled = {q: sj.pool(jnp.asarray(y), n[q], "avg") for q, y in Y.items()}
    k = sj.k_per_q(pooled, 0.8)
    k = k if k_per_q else dict.fromkeys(Y, max(k.values()))
    assert got == {q: (n[q], k[q]) for q in Y}
