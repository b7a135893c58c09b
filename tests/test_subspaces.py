"""Subspace fitting: parity with spacelearn, the Space pytree, properties, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import spacelearn
from conftest import problem, quiet, to_jax, to_torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spacelearn import optim as ref_optim

import space_jax as sj

# Projectors and predictions are basis-independent, so they compare across libraries without
# sign conventions. float64: LAPACK on both sides, ~1e-13. float32: singular vectors of C carry
# ~eps * cond(C) error; the problems here have well-separated spectra: 1e-4.
TOL = {np.float64: 1e-9, np.float32: 1e-4}


def projectors(W):
    return {q: np.asarray(w, np.float64).T @ np.asarray(w, np.float64) for q, w in W.items()}


def predictions(Z, W, A):
    Zc = np.asarray(Z, np.float64) - np.asarray(Z, np.float64).mean(0)
    out = {}
    for q in W:
        w = np.asarray(W[q], np.float64)
        out[q] = Zc @ w.T @ np.asarray(A[q], np.float64)
    return out


def close(got: dict, want: dict, tol):
    assert set(got) == set(want)  # jit passes dicts in sorted key order
    for q in got:
        g, w = np.asarray(got[q], np.float64), np.asarray(want[q], np.float64)
        assert g.shape == w.shape, q
        scale = max(np.abs(w).max(), 1e-30)
        np.testing.assert_allclose(g / scale, w / scale, atol=tol, err_msg=q)


@pytest.mark.parametrize("k", [3, {"field": 2, "energy": 3}, 40])
def test_subspaces_match_spacelearn(k, dtype):
    Z, Y = problem(1, dtype=dtype)
    got = sj.subspaces(*to_jax((Z, Y)), k)
    with quiet():
        want = spacelearn.subspaces(*to_torch((Z, Y)), k)
    for q in got:
        assert got[q].dtype == dtype
    close(projectors(got), projectors({q: w.numpy() for q, w in want.items()}), TOL[dtype])


def test_principal_directions_match_spacelearn_up_to_sign(dtype):
    Z, Y = problem(2, dtype=dtype)
    got = sj.principal_directions(*to_jax((Z, Y)))
    want = spacelearn.principal_directions(*to_torch((Z, Y)))
    for q, (w, v) in got.items():
        rw, rv = (t.numpy() for t in want[q])
        sign = np.sign(np.dot(np.asarray(w, np.float64), rw))
        assert w.shape == rw.shape and v.shape == rv.shape and w.dtype == dtype
        np.testing.assert_allclose(sign * np.asarray(w), rw, atol=TOL[dtype])
        np.testing.assert_allclose(sign * np.asarray(v), rv, atol=TOL[dtype])
        # our sign convention: the largest entry of w is positive
        assert float(w[jnp.argmax(jnp.abs(w))]) > 0


def test_fit_decoders_match_spacelearn(dtype):
    Z, Y = problem(3, dtype=dtype)
    W = sj.subspaces(*to_jax((Z, Y)), 3)
    got = sj.fit_decoders(W, *to_jax((Z, Y)))
    want = ref_optim.fit_decoders(to_torch(W), *to_torch((Z, Y)))
    close(got, {q: a.numpy() for q, a in want.items()}, TOL[dtype])


def test_solve_subspaces_matches_spacelearn(dtype):
    Z, Y = problem(4, dtype=dtype)
    got = sj.solve_subspaces(*to_jax((Z, Y)), k=3)
    with quiet():
        want = spacelearn.solve_subspaces(*to_torch((Z, Y)), k=3)
    wW = {q: t.numpy() for q, t in want.W.items()}
    wA = {q: t.numpy() for q, t in want.A.items()}
    close(projectors(got.W), projectors(wW), TOL[dtype])
    close(predictions(Z, got.W, got.A), predictions(Z, wW, wA), TOL[dtype])
    for q in got:
        assert got.V[q].shape == want.V[q].shape
        np.testing.assert_allclose(
            np.abs(np.asarray(got.V[q])), np.abs(want.V[q].numpy()), atol=TOL[dtype]
        )


def test_space_is_a_mapping_and_a_pytree():
    Z, Y = to_jax(problem(5))
    space = sj.solve_subspaces(Z, Y, k=2)
    assert list(space) == list(space.keys()) == ["field", "energy"]
    assert len(space) == 2 and "field" in space and "nope" not in space
    W, A, V = space["energy"]
    assert W.shape == (2, 16) and A.shape == (2, 3) and V.shape == (3,)
    assert [q for q, _ in space.items()] == ["field", "energy"]
    assert len(space.values()) == 2
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, space)
    assert isinstance(doubled, sj.Space)
    np.testing.assert_allclose(doubled.W["field"], 2 * space.W["field"])
    jitted = jax.jit(lambda z, y: sj.solve_subspaces(z, y, k=2))(Z, Y)
    close(projectors(jitted.W), projectors(space.W), 1e-5)
    with pytest.raises(KeyError, match="no quantity 'nope'"):
        space["nope"]
    with pytest.raises(ValueError, match="W, A and V must name the same quantities"):
        sj.Space({"a": W}, {"b": A}, {"a": V})


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 6), solver=st.sampled_from(["auto", "svd"]))
def test_bases_have_orthonormal_rows(seed, k, solver):
    Z, Y = to_jax(problem(seed, B=40, D=12, dtype=np.float32))
    for w in sj.subspaces(Z, Y, k, solver=solver).values():
        np.testing.assert_allclose(w @ w.T, np.eye(w.shape[0]), atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), z_shift=st.floats(-100, 100), y_shift=st.floats(-100, 100))
def test_subspaces_invariant_to_constant_offsets(seed, z_shift, y_shift):
    with jax.enable_x64(True):
        Z, Y = to_jax(problem(seed))
        a = sj.solve_subspaces(Z, Y, k=3)
        b = sj.solve_subspaces(Z + z_shift, {q: y + y_shift for q, y in Y.items()}, k=3)
        close(projectors(b.W), projectors(a.W), 1e-8)
        close(predictions(Z, b.W, b.A), predictions(Z, a.W, a.A), 1e-8)


def test_active_k_pads_with_zero_rows_and_losses_match_the_small_basis():
    Z, Y = to_jax(problem(6, dims={"field": (1, 3, 3), "energy": (6,)}, dtype=np.float32))
    small = sj.solve_subspaces(Z, Y, k=2)
    padded = jax.jit(lambda z, y, n: sj.solve_subspaces(z, y, k=5, active_k=n))(Z, Y, 2)
    for q in small:
        assert padded.W[q].shape == (5, 16)
        assert not np.any(np.asarray(padded.W[q][2:])) and not np.any(np.asarray(padded.A[q][2:]))
    close(projectors(padded.W), projectors(small.W), 1e-5)
    np.testing.assert_allclose(
        sj.combined_loss(Z, padded.W, padded.A, Y, n_dir=8),
        sj.combined_loss(Z, small.W, small.A, Y, n_dir=8),
        rtol=1e-5,
    )

    # vmapped over active sizes
    def alignment_at(n):
        space = sj.solve_subspaces(Z, Y, k=5, active_k=n)
        return sj.alignment_loss(Z, space.W, space.A, Y)

    losses = jax.vmap(alignment_at)(jnp.arange(1, 6))
    assert np.all(np.diff(np.asarray(losses)) <= 1e-5)  # more rows never decode worse


def test_k_larger_than_available_gives_fewer_rows():
    Z, Y = to_jax(problem(7))
    W = sj.subspaces(Z, Y, 10)
    assert W["energy"].shape == (3, 16)  # m=3 singular vectors
    assert W["field"].shape == (10, 16)


def test_solvers_agree():
    with jax.enable_x64(True):
        Z, Y = to_jax(problem(8))
        ref = projectors(sj.subspaces(Z, Y, 2, solver="svd"))
        for solver in ("auto", "eigen"):
            close(projectors(sj.subspaces(Z, Y, 2, solver=solver)), ref, 1e-8)


def test_bad_input():
    Z, Y = to_jax(problem(9))
    with pytest.raises(ValueError, match="k: expected an int >= 1, got 0"):
        sj.subspaces(Z, Y, 0)
    with pytest.raises(ValueError, match=r"k: quantities must match Y's.*missing \['energy'\]"):
        sj.solve_subspaces(Z, Y, k={"field": 2})
    with pytest.raises(ValueError, match=r"k\['energy'\]: expected an int >= 1"):
        sj.solve_subspaces(Z, Y, k={"field": 2, "energy": -1})
    with pytest.raises(ValueError, match=r"Y\['energy'\]: batch size 10 does not match"):
        sj.principal_directions(Z, {**Y, "energy": Y["energy"][:10]})
    with pytest.raises(ValueError, match="solver: expected one of"):
        sj.subspaces(Z, Y, 2, solver="qr")
    with pytest.raises(ValueError, match="at least 2 samples"):
        sj.solve_subspaces(Z[:1], {q: y[:1] for q, y in Y.items()})
    with pytest.raises(TypeError, match=r"Y\['field'\]: expected a floating-point array"):
        sj.solve_subspaces(Z, {**Y, "field": Y["field"].astype(jnp.int32)})
    with pytest.raises(ValueError, match=r"Y: no targets for the quantities \['energy'\]"):
        sj.fit_decoders(sj.subspaces(Z, Y, 2), Z, {"field": Y["field"]})
    with pytest.raises(ValueError, match="Y: expected a non-empty dict"):
        sj.subspaces(Z, {}, 2)


def test_full_matrices_allow_k_up_to_d_as_spacelearn():
    from spacelearn.settings import config

    Z, Y = problem(10)
    old = config.solver_mode, config.use_full_matrix
    try:
        config.solver_mode, config.use_full_matrix = "svd", True
        with quiet():
            want = spacelearn.subspaces(*to_torch((Z, Y)), 6)
    finally:
        config.solver_mode, config.use_full_matrix = old
    with jax.enable_x64(True):
        got = sj.subspaces(*to_jax((Z, Y)), 6, solver="svd", full_matrices=True)
        space = sj.solve_subspaces(*to_jax((Z, Y)), k=6, full_matrices=True)
    assert got["energy"].shape == (6, 16) == space.W["energy"].shape  # beyond m=3
    # The first m directions are determined by C; the completion is any orthonormal basis of
    # the rest, so compare the span of the determined part and orthonormality of the whole.
    for q in got:
        g, w = np.asarray(got[q]), want[q].numpy()
        np.testing.assert_allclose(g @ g.T, np.eye(g.shape[0]), atol=1e-10)
        m = min(3 if q == "energy" else 16, 6)
        close(projectors({q: g[:m]}), projectors({q: w[:m]}), 1e-9)


def test_lowrank_options_reach_the_solver():
    Z, Y = to_jax(problem(11))
    a = sj.subspaces(Z, Y, 2, solver="lowrank", n_iter=0, key=jax.random.PRNGKey(1))
    b = sj.subspaces(Z, Y, 2, solver="lowrank", n_iter=4, key=jax.random.PRNGKey(1))
    exact = sj.subspaces(Z, Y, 2, solver="svd")
    err = {
        n: np.abs(projectors(w)["field"] - projectors(exact)["field"]).max()
        for n, w in (("0", a), ("4", b))
    }
    assert err["4"] < err["0"]
