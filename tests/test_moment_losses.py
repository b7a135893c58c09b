"""The objective from moments equals the objective on the concatenated data; active_k there."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import problem, random_bases, to_jax

import space_jax as sj


def chunked_moments(Z, Y, cuts):
    parts = []
    for a, b in zip((0, *cuts), (*cuts, Z.shape[0]), strict=True):
        parts.append(sj.moments(Z[a:b], {q: y[a:b] for q, y in Y.items()}))
    m = parts[0]
    for p in parts[1:]:
        m = sj.merge_moments(m, p)
    return m


def test_combined_loss_from_moments_equals_the_loss_on_all_data():
    with jax.enable_x64(True):
        Z, Y = to_jax(problem(11, B=90, D=12))
        W = to_jax(random_bases(np.random.default_rng(0), 12, {"field": 3, "energy": 2}))
        A = sj.fit_decoders(W, Z, Y)
        W_prev = {q: w + 0.01 for q, w in W.items()}
        m = chunked_moments(Z, Y, (20, 55))
        weights = (1.0, 0.5, 2.0, 0.3)

        # Values and gradients with respect to the bases and decoders, jitted.
        @jax.jit
        def both(m, W, A):
            def data(W, A):
                return sj.combined_loss(Z, W, A, Y, W_prev, n_dir=6, weights=weights)

            def stats(W, A):
                return sj.combined_loss_from_moments(m, W, A, W_prev, n_dir=6, weights=weights)

            return [jax.value_and_grad(f, argnums=(0, 1))(W, A) for f in (data, stats)]

        want, got = both(m, W, A)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
        for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


def test_combined_loss_from_moments_rejects_mismatches():
    Z, Y = to_jax(problem(12))
    W = to_jax(random_bases(np.random.default_rng(1), 16, {"field": 3, "energy": 2}))
    A = sj.fit_decoders(W, Z, Y)
    m = sj.moments(Z, Y)
    with pytest.raises(ValueError, match="W"):
        sj.combined_loss_from_moments(m, {"field": W["field"]}, {"field": A["field"]})
    with pytest.raises(ValueError, match="A\\['energy'\\]"):
        sj.combined_loss_from_moments(m, W, {**A, "energy": jnp.ones((2, 5))})
    with pytest.raises(TypeError, match="Moments"):
        sj.combined_loss_from_moments({"count": 3}, W, A)


def test_solve_subspaces_from_moments_with_active_k_equals_solve_subspaces():
    with jax.enable_x64(True):
        Z, Y = to_jax(problem(13, B=70))
        m = chunked_moments(Z, Y, (33,))
        for active in (2, {"field": 1, "energy": 3}):
            want = sj.solve_subspaces(Z, Y, k=4, active_k=active)
            got = jax.jit(lambda m, n: sj.solve_subspaces_from_moments(m, 4, active_k=n))(m, active)
            for q in want:
                n = active[q] if isinstance(active, dict) else active
                assert got.W[q].shape == (min(4, want.W[q].shape[0]), 16)
                assert not np.any(np.asarray(got.W[q][n:])) and not np.any(np.asarray(got.A[q][n:]))
                proj = [np.asarray(s.W[q]).T @ np.asarray(s.W[q]) for s in (got, want)]
                np.testing.assert_allclose(proj[0], proj[1], atol=1e-9)
                np.testing.assert_allclose(
                    np.asarray(got.W[q]).T @ np.asarray(got.A[q]),
                    np.asarray(want.W[q]).T @ np.asarray(want.A[q]),
                    atol=1e-9,
                )
