"""space_jax._top_eigh: the leading eigenpairs without the whole decomposition.

Checked against NumPy's float64 ``eigh`` of the same matrix. Tolerances, relative to the largest
eigenvalue: LAPACK's own float32 ``eigh`` reaches residuals ``|A v - lambda v|`` of about 6e-7
and orthogonality of about 7e-7 on these matrices; the tridiagonal route reaches 1.5-2.5x that,
so 1e-5 (float32) and 1e-12 (float64) leave an order of magnitude of margin. Eigenvalues are
compared as values (a cluster's eigenvectors are any basis of its invariant subspace), and
eigenvectors through the residual and the orthogonality of the block.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import space_jax as sj
from space_jax import _top_eigh

D, N = 256, 32  # the main size's latent width and isotropy directions: the tridiagonal route
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def spectrum_matrix(eigenvalues, seed, dtype):
    q = np.linalg.qr(np.random.default_rng(seed).standard_normal((D, D)))[0]
    return ((q * eigenvalues) @ q.T).astype(dtype)


# Jitted once: jit caches per shape and dtype, so every matrix below reuses the compilation.
top_pairs = jax.jit(lambda a: _top_eigh.top_eigh(a, N))
top_values = jax.jit(lambda a: _top_eigh.top_eigvalsh(a, N))
multisection = jax.jit(lambda d, e: _top_eigh._top_values(d, e, N))


def assert_top_pairs(a, dtype):
    lam, v = top_pairs(jnp.asarray(a))
    values = top_values(jnp.asarray(a))
    lam, v, values = np.asarray(lam), np.asarray(v), np.asarray(values)
    assert lam.dtype == v.dtype == values.dtype == dtype
    assert lam.shape == values.shape == (N,) and v.shape == (D, N)
    want = np.linalg.eigvalsh(a.astype(np.float64))[::-1][:N]
    scale = max(abs(want).max(), np.finfo(dtype).tiny)
    tol = TOL[dtype]
    assert np.all(np.diff(lam) <= tol * scale)  # descending
    assert np.abs(lam - want).max() <= tol * scale
    assert np.abs(values - want).max() <= tol * scale
    residual = a.astype(np.float64) @ v - v * lam
    assert np.linalg.norm(residual, axis=0).max() <= 10 * tol * scale
    assert np.abs(v.T.astype(np.float64) @ v - np.eye(N)).max() <= 10 * tol


def eigensolvers(fn, size):
    """The LAPACK eigen-calls in ``fn``'s CPU program: ``(target, matrix size)``."""
    text = jax.jit(fn).lower(jnp.zeros((size, size))).as_text()
    calls = re.findall(r"@lapack_s(syevd|sytrd)_ffi\(.*?tensor<(\d+)x\d+xf32>", text)
    return {(name, int(n)) for name, n in calls}


def test_the_route_is_taken_where_it_pays_and_not_below():
    # D x D: a tridiagonal reduction; the only full eigh is the n x n Rayleigh-Ritz one.
    assert eigensolvers(lambda a: _top_eigh.top_eigh(a, N), D) == {("sytrd", D), ("syevd", N)}
    assert eigensolvers(lambda a: _top_eigh.top_eigvalsh(a, N), D) == {("sytrd", D)}
    # Eigenvalues only: the whole spectrum too from ALL_VALUES_MIN columns on, not below.
    assert eigensolvers(lambda a: _top_eigh.top_eigvalsh(a, D), D) == {("sytrd", D)}
    assert eigensolvers(lambda a: _top_eigh.top_eigvalsh(a, 128), 128) == {("syevd", 128)}
    # Small matrices, or half the spectrum: the whole decomposition is cheaper.
    assert eigensolvers(lambda a: _top_eigh.top_eigh(a, 8), 64) == {("syevd", 64)}
    assert eigensolvers(lambda a: _top_eigh.top_eigh(a, D // 2), D) == {("syevd", D)}


def test_structured_spectra(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4 * D, D))
    basis = np.linalg.qr(rng.standard_normal((D, 64)))[0].T
    projector = np.eye(D) - basis.T @ basis
    low_rank = rng.standard_normal((D, 5))
    cases = {
        "gram": x.T @ x,
        "projected gram (64 zero eigenvalues)": projector @ (x.T @ x) @ projector,
        "rank 5 (zeros inside the top n)": low_rank @ low_rank.T,
        "diagonal (no reflectors)": np.diag(np.arange(D, dtype=float)),
        "zero": np.zeros((D, D)),
        "all ones (one eigenvalue, the rest zero)": np.ones((D, D)),
        "cluster across the n-th eigenvalue": spectrum_matrix(
            np.concatenate([np.full(10, 5.0), np.full(30, 2.0), np.linspace(1, 0, D - 40)]),
            1,
            float,
        ),
    }
    for name, a in cases.items():
        try:
            assert_top_pairs(a.astype(dtype), dtype)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    clusters=st.lists(
        st.tuples(st.floats(-10.0, 10.0), st.integers(1, 40)), min_size=1, max_size=6
    ),
)
def test_any_spectrum_of_clusters(seed, clusters):
    """Eigenvalues in clusters of any size and sign (indefinite matrices too), the rest drawn
    at random: the top ``n`` pairs match."""
    rng = np.random.default_rng(seed)
    values = [v for v, count in clusters for _ in range(count)]
    values = np.array((values + list(rng.uniform(-10, 10, D)))[:D])
    assert_top_pairs(spectrum_matrix(values, seed, np.float32), np.float32)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    exponent=st.integers(-15, 15),
    zero_fraction=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    repeats=st.booleans(),
)
def test_multisection_values_of_any_tridiagonal(seed, exponent, zero_fraction, repeats):
    """The Sturm-count multisection alone, on tridiagonal matrices of any scale, with zero
    off-diagonal entries (decoupled blocks, repeated eigenvalues across them) and repeated
    diagonal entries: the ``n`` largest eigenvalues to a few ``eps * |T|``, as LAPACK's
    bisection guarantees (its bound is ``O(D eps |T|)``; at most 1.2 eps over 200 such
    matrices, 64 allowed)."""
    rng = np.random.default_rng(seed)
    d = rng.standard_normal(D)
    if repeats:
        d = np.round(d * 2) / 2  # few distinct values: exact ties between decoupled blocks
    e = rng.standard_normal(D - 1) * (rng.random(D - 1) >= zero_fraction)
    d, e = (10.0**exponent * d).astype(np.float32), (10.0**exponent * e).astype(np.float32)
    t = np.diag(d.astype(np.float64)) + np.diag(e.astype(np.float64), 1) + np.diag(e, -1)
    want = np.linalg.eigvalsh(t)[::-1][:N]
    got = np.asarray(multisection(jnp.asarray(d), jnp.asarray(e)))
    assert got.dtype == np.float32 and got.shape == (N,)
    norm = np.abs(np.linalg.eigvalsh(t)).max()
    assert np.abs(got - want).max() <= 64 * np.finfo(np.float32).eps * norm


def test_the_whole_spectrum_by_the_route():
    """All ``D`` eigenvalues (what the rank rule of ``space_jax.dims`` reads) equal LAPACK's."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4 * D, 4)) @ rng.standard_normal((4, D))
    a = (x + 0.1 * rng.standard_normal((4 * D, D))).T @ x  # a few modes and noise: the usual
    for case in (a + a.T, np.zeros((D, D)), np.diag(np.arange(D, dtype=float))):
        got = np.asarray(jax.jit(lambda m: _top_eigh.top_eigvalsh(m, D))(case.astype(np.float32)))
        want = np.linalg.eigvalsh(case)[::-1]
        assert got.shape == (D,)
        assert np.abs(got - want).max() <= 1e-5 * max(np.abs(want).max(), 1e-30)


def test_vmap_equals_each_call():
    rng = np.random.default_rng(2)
    a = np.stack([spectrum_matrix(rng.uniform(0, 1 + i, D), i, np.float32) for i in range(3)])
    batched = jax.jit(jax.vmap(lambda m: _top_eigh.top_eigh(m, N)))(jnp.asarray(a))
    single = [top_pairs(jnp.asarray(m)) for m in a]
    for i, (lam, v) in enumerate(single):
        np.testing.assert_array_equal(np.asarray(batched[0][i]), np.asarray(lam))
        np.testing.assert_array_equal(np.asarray(batched[1][i]), np.asarray(v))
    # The whole spectrum (the sizing functions' route) under vmap: the same values as each call.
    spectra = jax.jit(jax.vmap(lambda m: _top_eigh.top_eigvalsh(m, D)))(jnp.asarray(a))
    for i, m in enumerate(a):
        want = jax.jit(lambda m: _top_eigh.top_eigvalsh(m, D))(jnp.asarray(m))
        np.testing.assert_array_equal(np.asarray(spectra[i]), np.asarray(want))


def test_isotropy_through_the_route_equals_the_full_decomposition(monkeypatch):
    """The combined loss and its gradients at ``D = 256`` (the route) equal those computed
    with LAPACK's whole ``eigh`` (the route switched off), to float32 rounding."""
    rng = np.random.default_rng(3)
    B, Q, k, m = 1024, 4, 16, 8
    Z = jnp.asarray(rng.standard_normal((B, D)) @ rng.standard_normal((D, D)) / 16, jnp.float32)
    W = {f"q{i}": jnp.asarray(np.linalg.qr(rng.standard_normal((D, k)))[0].T) for i in range(Q)}
    A = {q: jnp.asarray(rng.standard_normal((k, m)), jnp.float32) for q in W}
    Y = {q: jnp.asarray(rng.standard_normal((B, m)), jnp.float32) for q in W}

    def value_and_grads():
        fn = jax.value_and_grad(sj.combined_loss, argnums=(0, 1))
        return jax.jit(fn)(Z, W, A, Y)

    routed = value_and_grads()
    monkeypatch.setattr(_top_eigh, "TOP_EIGH_MIN", 10**9)
    full = value_and_grads()
    (loss_r, (gz_r, gw_r)), (loss_f, (gz_f, gw_f)) = routed, full
    np.testing.assert_allclose(loss_r, loss_f, rtol=1e-5)
    np.testing.assert_allclose(gz_r, gz_f, rtol=1e-4, atol=1e-4 * float(jnp.abs(gz_f).max()))
    for q in W:
        scale = float(jnp.abs(gw_f[q]).max())
        np.testing.assert_allclose(gw_r[q], gw_f[q], rtol=1e-4, atol=1e-4 * scale)


def test_half_precision_is_computed_in_float32_and_returned_in_its_dtype():
    x = np.random.default_rng(4).standard_normal((4 * D, D)).astype(np.float32)
    a = x.T @ x
    want = np.linalg.eigvalsh(a.astype(np.float64))[::-1][:N]
    for dtype, tol in ((jnp.float16, 2e-3), (jnp.bfloat16, 2e-2)):  # the inputs' rounding
        lam, v = top_pairs(jnp.asarray(a, dtype))
        values = top_values(jnp.asarray(a, dtype))
        assert lam.dtype == v.dtype == values.dtype == dtype
        for got in (lam, values):
            assert np.abs(np.asarray(got, np.float64) - want).max() <= tol * want[0]


def test_non_finite_input_gives_nan_not_a_hang():
    """The bisection and inverse iteration have fixed iteration counts: NaN or inf in the
    matrix comes out as NaN, as LAPACK's eigh reports it, in bounded time."""
    for bad in (np.nan, np.inf):
        a = np.eye(D, dtype=np.float32)
        a[3, 5] = a[5, 3] = bad
        lam, _ = top_pairs(jnp.asarray(a))
        assert np.isnan(np.asarray(lam)).any()
        assert np.isnan(np.asarray(top_values(jnp.asarray(a)))).any()
