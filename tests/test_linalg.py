"""SVD back ends, the custom derivatives, and subspace_change."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spacelearn.optim import subspace_change as ref_subspace_change

import space_jax as sj

SHAPES = [(40, 7), (7, 40), (12, 12), (300, 20)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("solver", ["auto", "svd", "eigen"])
def test_exact_solvers_reproduce_numpy(shape, solver):
    with jax.enable_x64(True):
        a = np.random.default_rng(0).normal(size=shape)
        r = min(shape)
        s_ref = np.linalg.svd(a, compute_uv=False)
        u, s, vh = sj.full(a, solver=solver)
        assert u.shape == (shape[0], r) and s.shape == (r,) and vh.shape == (r, shape[1])
        np.testing.assert_allclose(s, s_ref, rtol=1e-9)
        np.testing.assert_allclose((u * s) @ vh, a, atol=1e-9)
        np.testing.assert_allclose(sj.singular_values(a, solver=solver), s_ref, rtol=1e-9)
        lu, ls = sj.left(a, solver=solver)
        rv, rs = sj.right(a, solver=solver)
        np.testing.assert_allclose(lu.T @ lu, np.eye(r), atol=1e-9)
        np.testing.assert_allclose(rv @ rv.T, np.eye(r), atol=1e-9)
        # vectors agree with numpy's up to sign
        u_ref, _, vh_ref = np.linalg.svd(a, full_matrices=False)
        np.testing.assert_allclose(np.abs(np.sum(lu * u_ref, axis=0)), 1, atol=1e-8)
        np.testing.assert_allclose(np.abs(np.sum(rv * vh_ref, axis=1)), 1, atol=1e-8)


def test_full_matrices_and_solver_parity_with_spacelearn():
    from spacelearn import util as ref_util
    from spacelearn.settings import config

    a = np.random.default_rng(1).normal(size=(30, 8))
    old = config.solver_mode, config.use_full_matrix
    try:
        config.solver_mode, config.use_full_matrix = "svd", True
        U, S = ref_util.left(torch.from_numpy(a))
    finally:
        config.solver_mode, config.use_full_matrix = old
    with jax.enable_x64(True):
        u, s = sj.left(a, solver="svd", full_matrices=True)
    assert u.shape == tuple(U.shape) == (30, 30)
    np.testing.assert_allclose(s, S.numpy(), rtol=1e-12)


def test_lowrank_recovers_a_low_rank_matrix():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(200, 4)) @ rng.normal(size=(4, 50))
    with jax.enable_x64(True):
        u, s, vh = sj.full(a, solver="lowrank", n_iter=2)
        assert u.shape == (200, 6) and s.shape == (6,) and vh.shape == (6, 50)
        np.testing.assert_allclose(s[:4], np.linalg.svd(a, compute_uv=False)[:4], rtol=1e-8)
        np.testing.assert_allclose((u * s) @ vh, a, atol=1e-8)
        # wide input, other key: same answer for an exactly low-rank matrix
        s2 = sj.singular_values(a.T, solver="lowrank", key=jax.random.PRNGKey(3))
        np.testing.assert_allclose(s2[:4], s[:4], rtol=1e-8)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), B=st.integers(2, 20), D=st.integers(1, 8))
def test_gram_and_eigvals_derivatives_match_autodiff_and_finite_differences(seed, B, D):
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(seed).normal(size=(B, D)))
        c = jnp.asarray(np.random.default_rng(seed + 1).normal(size=(D, D)))
        got = jax.grad(lambda x: jnp.sum(sj.gram(x) * c))(x)
        want = jax.grad(lambda x: jnp.sum((x.T @ x) * c))(x)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        m = x.T @ x
        g = jnp.arange(D, dtype=m.dtype)
        got = jax.grad(lambda m: jnp.sum(sj.symmetric_eigvals(m) * g))(m)
        eps = 1e-6
        direction = jnp.asarray(np.random.default_rng(seed + 2).normal(size=(D, D)))
        direction = direction + direction.T
        fd = (
            jnp.sum(sj.symmetric_eigvals(m + eps * direction) * g)
            - jnp.sum(sj.symmetric_eigvals(m - eps * direction) * g)
        ) / (2 * eps)
        eigvals = np.linalg.eigvalsh(np.asarray(m))
        if (
            D == 1 or np.min(np.diff(eigvals)) > 1e-3
        ):  # finite differences need distinct eigenvalues
            np.testing.assert_allclose(jnp.sum(got * direction), fd, rtol=1e-5, atol=1e-6)


def test_eigvals_derivative_is_finite_for_repeated_eigenvalues():
    m = jnp.diag(jnp.array([3.0, 1.0, 0.0, 0.0, 0.0]))
    g = jax.grad(lambda m: jnp.sum(jnp.sqrt(sj.symmetric_eigvals(m)[:2])))(m)
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_allclose(jnp.diag(g)[:2], [0.5 / np.sqrt(3), 0.5])


def test_linalg_bad_input():
    with pytest.raises(ValueError, match="solver: expected one of"):
        sj.left(jnp.ones((3, 3)), solver="qr")
    with pytest.raises(ValueError, match=r"A: expected a matrix of shape \(H, W\)"):
        sj.singular_values(jnp.ones(3))
    with pytest.raises(TypeError, match="A: expected a floating-point array"):
        sj.full(np.ones((3, 3), dtype=np.int64))


def test_subspace_change_matches_spacelearn():
    rng = np.random.default_rng(4)
    old, _ = np.linalg.qr(rng.normal(size=(10, 3)))
    new, _ = np.linalg.qr(old + 0.1 * rng.normal(size=(10, 3)))
    with jax.enable_x64(True):
        got = sj.subspace_change(old.T, new.T)
        same = sj.subspace_change(old.T, old.T)
    want = ref_subspace_change(torch.from_numpy(old.T), torch.from_numpy(new.T))
    assert set(got) == set(want)
    for key in got:
        np.testing.assert_allclose(np.asarray(got[key]), want[key].numpy(), rtol=1e-10)
    assert float(same["mean_angle_deg"]) == 0.0
    with pytest.raises(ValueError, match="W_old, W_new: expected bases"):
        sj.subspace_change(old.T, new)


# A few shapes (K = 0, K < D - 1, K = D - 1 ...) and jitted checks, so that the examples reuse
# four compilations instead of compiling each shape eagerly.
_RESIDUAL_SHAPES = ((2, 0), (5, 1), (7, 3), (10, 2))


@functools.cache
def _residual_checks(D: int, K: int):
    n = D - K  # the residual's non-zero spectrum: generically distinct, so derivatives are unique

    def dense(x, w, c):  # the same eigenvalues through the generic eigenvalue derivative
        p = jnp.eye(D) - w.T @ w
        return jnp.sum(sj.symmetric_eigvals(p @ x.T @ x @ p)[:n] * c)

    def ours(x, w, c):
        return jnp.sum(sj.residual_gram_eigvals(x, w, n) * c)

    @jax.jit
    def run(x, w, c):
        got = jax.grad(ours, (0, 1))(x, w, c)
        want = jax.grad(dense, (0, 1))(x, w, c)
        return sj.residual_gram_eigvals(x, w, n), got, want

    return run


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), shape=st.sampled_from(_RESIDUAL_SHAPES))
def test_residual_gram_eigvals_matches_svd_and_dense_derivatives(seed, shape):
    rng = np.random.default_rng(seed)
    D, K = shape
    B, n = D + 5, D - K
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(B, D)) * np.linspace(2, 0.5, D))
        w = jnp.asarray(rng.normal(size=(K, D)))  # not orthonormal: the derivative is general
        r = x - x @ w.T @ w
        c = jnp.asarray(rng.normal(size=n))
        lam, got, want = _residual_checks(D, K)(x, w, c)
        np.testing.assert_allclose(lam, np.linalg.svd(r, compute_uv=False)[:n] ** 2, atol=1e-9)
        for g, h in zip(got, want, strict=True):
            np.testing.assert_allclose(g, h, rtol=1e-7, atol=1e-8)
