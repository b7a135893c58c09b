"""SVD back ends, the custom derivatives, and subspace_change."""

from __future__ import annotations

import functools
import re
from pathlib import Path

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


# --- batch-safe decompositions (space_jax.linalg.eigh, svd, ...) ------------------------------

N_ITEMS = 2


def _items(rng, shape, dtype, n=N_ITEMS, symmetric=False):
    x = rng.normal(size=(n, *shape))
    if symmetric:
        x = x @ np.swapaxes(x, -1, -2) + np.eye(shape[-1])
    return jnp.asarray(x.astype(dtype))


def _cases(dtype):
    """name -> (function of arrays, arrays with a leading item axis)."""
    rng = np.random.default_rng(5)
    sym, tall, wide = _items(rng, (5, 5), dtype, symmetric=True), None, None
    tall, wide = _items(rng, (7, 4), dtype), _items(rng, (3, 6), dtype)
    rhs_tall, rhs_sq = _items(rng, (7, 2), dtype), _items(rng, (5, 2), dtype)
    L = sj.linalg
    return {
        "eigh": (lambda a: L.eigh(a), (sym,)),
        "eigvalsh": (lambda a: L.eigvalsh(a), (sym,)),
        "svd": (lambda a: L.svd(a), (tall,)),
        "svd_wide": (lambda a: L.svd(a), (wide,)),
        "svdvals": (lambda a: L.svd(a, compute_uv=False), (tall,)),
        "qr": (lambda a: L.qr(a), (tall,)),
        "pinv": (lambda a: L.pinv(a), (wide,)),
        "pinv_hermitian": (lambda a: L.pinv(a, hermitian=True), (sym,)),
        "lstsq": (lambda a, b: L.lstsq(a, b), (tall, rhs_tall)),
        "solve": (lambda a, b: L.solve(a, b), (sym, rhs_sq)),
    }


def _scalar(fn):
    """A smooth scalar of every output (sign-invariant for singular and eigenvectors)."""

    def f(*args):
        return sum(jnp.sum(jnp.sin(o) ** 2) for o in jax.tree_util.tree_leaves(fn(*args)))

    return f


def _loop(fn, args):
    outs = [fn(*(a[i] for a in args)) for i in range(args[0].shape[0])]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)


def _assert_tree_close(got, want, dtype):
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


def _transformed(fn, args, nested: bool):
    """vmap, vmap of grad and grad of a vmapped sum of ``fn`` (with ``nested``: also nested
    vmap and leading batch dimensions), each with its per-item loop: ``{what: (got, loop)}``."""
    scalar = _scalar(fn)
    argnums = tuple(range(len(args)))
    want = _loop(fn, args)
    grad_loop = _loop(jax.grad(scalar, argnums), args)
    out = {
        "vmap": (jax.vmap(fn)(*args), want),
        "vmap(grad)": (jax.vmap(jax.grad(scalar, argnums))(*args), grad_loop),
        "grad(vmap)": (
            jax.grad(lambda *xs: jnp.sum(jax.vmap(scalar)(*xs)), argnums)(*args),
            grad_loop,
        ),
    }
    if nested:
        twice = jax.vmap(jax.vmap(fn))(*(jnp.stack([a, 2 * a]) for a in args))
        out["nested vmap"] = (jax.tree_util.tree_map(lambda x: x[0], twice), want)
        out["leading dims"] = (fn(*args), want)
    return out


def test_vmap_and_its_gradients_equal_the_loop(dtype):
    """Every solver, batched every way and differentiated under vmap, equals the loop (one
    compiled program per dtype, for the test's time)."""
    cases = _cases(dtype)
    nested = {"eigh", "svd", "solve"}
    results = jax.jit(
        lambda: {name: _transformed(*case, name in nested) for name, case in cases.items()}
    )()
    for name, checks in results.items():
        for what, (got, want) in checks.items():
            try:
                _assert_tree_close(got, want, dtype)
            except AssertionError as err:
                raise AssertionError(f"{name}, {what}: {err}") from None


def test_derivatives_equal_jax_numpy():
    """The custom JVPs against jnp.linalg's own rules (float64, generic inputs)."""
    refs = {
        "eigh": jnp.linalg.eigh,
        "svd": lambda a: jnp.linalg.svd(a, full_matrices=False),
        "svd_wide": lambda a: jnp.linalg.svd(a, full_matrices=False),
        "svdvals": lambda a: jnp.linalg.svd(a, compute_uv=False),
        "qr": jnp.linalg.qr,
        "pinv": jnp.linalg.pinv,
        "lstsq": lambda a, b: jnp.linalg.lstsq(a, b)[0],
    }
    with jax.enable_x64(True):
        cases = _cases(np.float64)

        @jax.jit
        def both():
            out = {}
            for name, ref in refs.items():
                fn, args = cases[name]
                one = tuple(a[0] for a in args)
                direction = tuple(jnp.cos(jnp.arange(a.size).reshape(a.shape)) for a in one)
                argnums = tuple(range(len(one)))
                out[name] = [
                    (jax.jvp(_scalar(f), one, direction), jax.grad(_scalar(f), argnums)(*one))
                    for f in (fn, ref)
                ]
            return out

        for name, (got, want) in both().items():
            leaves = zip(
                jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True
            )
            for g, w in leaves:
                np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-10, err_msg=name)


def _lapack_operands(fn, *args) -> list[tuple[str, list[int]]]:
    """``(kernel, operand ranks)`` of every LAPACK custom call in the lowered program."""
    text = jax.jit(fn).lower(*args).as_text()
    calls = []
    for m in re.finditer(r"custom_call @(\w*lapack\w*)\([^)]*\)[^\n]*?:\s*\(([^)]*)\)", text):
        ranks = [t.count("x") for t in re.findall(r"tensor<([^>]*)>", m.group(2))]
        calls.append((m.group(1), ranks))
    return calls


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU lowering is what is checked")
def test_no_batched_lapack_call_under_vmap_on_cpu():
    """What hangs with jaxlib 0.10: a LAPACK kernel given a batch. Every call is one matrix
    (rank 2, vectors rank 1), under vmap, nested vmap, and vmap of gradients, in the solvers
    and in a SPACE training step (subspace refit, combined loss gradient)."""
    cases = _cases(np.float32)
    programs = []
    for fn, args in cases.values():
        scalar = _scalar(fn)
        programs += [
            (jax.vmap(fn), args),
            (jax.vmap(jax.vmap(fn)), tuple(jnp.stack([a, a]) for a in args)),
            (jax.vmap(jax.grad(scalar)), args),
            (jax.grad(lambda *xs, s=scalar: jnp.sum(jax.vmap(s)(*xs))), args),
        ]
    Z, Y = _space_problem()

    def space_step(scale):
        z = Z * scale
        space = sj.solve_subspaces(z, Y, k=2)
        return jax.grad(lambda z: sj.combined_loss(z, space.W, space.A, Y))(z)

    programs.append((jax.vmap(space_step), (jnp.linspace(0.5, 2.0, 4),)))
    seen = set()
    for fn, args in programs:
        for kernel, ranks in _lapack_operands(fn, *args):
            seen.add(kernel)
            assert max(ranks) <= 2, (kernel, ranks)
    assert {"lapack_ssyevd_ffi", "lapack_sgesdd_ffi", "lapack_sgetrf_ffi"} <= seen


def _space_problem():
    from conftest import problem

    Z, Y = problem(6, B=48, D=10, dtype=np.float32)
    return jnp.asarray(Z), {q: jnp.asarray(y) for q, y in Y.items()}


def test_library_calls_decompositions_only_through_space_jax_linalg():
    """The seam: no module of space_jax calls jnp.linalg / jax.scipy.linalg / lax.linalg
    decompositions directly (they would not be batch-safe)."""
    root = Path(sj.__file__).parent
    pattern = re.compile(
        r"(?<![`\w.])(jnp\.linalg|numpy\.linalg|jax\.scipy\.linalg|jsl|lax\.linalg)\."
        r"(eigh|eigvalsh|eig|eigvals|svd|svdvals|qr|lstsq|pinv|solve|inv|cholesky|lu|lu_factor|"
        r"lu_solve|solve_triangular|cho_solve|cho_factor|det|slogdet|matrix_rank|schur|polar)\b"
    )
    allowed = {"_lapack.py"}  # the one place that makes the raw calls
    offenders = [
        f"{path.relative_to(root)}:{i}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        if path.name not in allowed
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith(("#", "*", "``"))
    ]
    assert not offenders, "\n".join(offenders)


def test_decompositions_bad_input():
    L = sj.linalg
    with pytest.raises(ValueError, match=r"a: expected square matrices"):
        L.eigh(jnp.ones((3, 4)))
    with pytest.raises(ValueError, match=r"a: expected an array of at least 2 dimensions"):
        L.svd(jnp.ones(3))
    with pytest.raises(ValueError, match=r"b: expected shape \(5,\) or \(5,\) \+ \(k,\)"):
        L.lstsq(jnp.ones((5, 2)), jnp.ones((4,)))
    with pytest.raises(ValueError, match=r"b: expected shape \(3,\)"):
        L.solve(jnp.eye(3), jnp.ones(4))
    with pytest.raises(TypeError, match=r"rtol: expected a Python float or None"):
        jax.jit(lambda t: L.pinv(jnp.eye(3), rtol=t))(0.1)
    with pytest.raises(ValueError, match=r"rcond: expected a cut-off >= 0"):
        L.lstsq(jnp.eye(3), jnp.ones(3), rcond=-1.0)
    with pytest.raises(NotImplementedError, match="full_matrices=True"):
        jax.grad(lambda a: jnp.sum(L.svd(a, full_matrices=True)[1]))(jnp.eye(3))


def test_gpu_lowering_keeps_the_batched_solvers():
    """The platform is chosen when lowering: for CUDA (lowered here without a GPU) a vmapped
    eigh and SVD are one batched cuSOLVER call each, no loop; for CPU a loop of unbatched calls."""

    def lowered(fn, platform):
        return (
            jax.jit(jax.vmap(fn))
            .trace(jnp.ones((4, 6, 6)))
            .lower(lowering_platforms=(platform,))
            .as_text()
        )

    for fn, kernel in (
        (sj.linalg.eigh, "cusolver_syevd"),
        (sj.linalg.eigvalsh, "cusolver_syevd"),
        (sj.linalg.svd, "cusolver_gesvd"),
    ):
        cuda, cpu = lowered(fn, "cuda"), lowered(fn, "cpu")
        calls = re.findall(r"custom_call @(\w+)\([^)]*\)[^\n]*?:\s*\(tensor<([^>]*)>", cuda)
        assert any(kernel in name and shape.startswith("4x6x6") for name, shape in calls), calls
        assert "stablehlo.while" not in cuda
        assert "stablehlo.while" in cpu


def test_empty_matrices_match_jax_numpy():
    L, e = sj.linalg, jnp.zeros
    pairs = [
        (L.eigh(e((0, 0))), jnp.linalg.eigh(e((0, 0)))),
        (L.eigh(e((0, 3, 3))), jnp.linalg.eigh(e((0, 3, 3)))),
        (L.eigvalsh(e((0, 0))), jnp.linalg.eigvalsh(e((0, 0)))),
        (L.pinv(e((0, 3))), jnp.linalg.pinv(e((0, 3)))),
        (L.lstsq(e((0, 2)), e(0)), jnp.linalg.lstsq(e((0, 2)), e(0))[0]),
        (L.svd(e((0, 3)), compute_uv=False), jnp.linalg.svd(e((0, 3)), compute_uv=False)),
    ]
    for got, want in pairs:
        leaves = jax.tree_util.tree_leaves
        for g, w in zip(leaves(got), leaves(want), strict=True):
            assert g.shape == w.shape
            np.testing.assert_array_equal(g, w)


def _syevd_modes(fn, *args) -> list[str]:
    """LAPACK's ``jobz`` of every ``?syevd`` call in ``fn``'s CPU program: "N" or "V"."""
    text = jax.jit(fn).lower(*args).as_text()
    calls = re.findall(r"custom_call @lapack_\wsyevd_ffi\([^\n]*?mode = (\d+) : ui8", text)
    return [chr(int(m)) for m in calls]


def test_eigenvalues_alone_compute_no_eigenvectors_on_cpu():
    """``eigvalsh``, ``symmetric_eigvals`` and the undifferentiated isotropy statistics ask
    LAPACK for eigenvalues only (``jobz='N'``, a fraction of the cost); their derivatives
    still get the eigenvectors, and the values agree with the full decomposition's."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(12, 12)).astype(np.float32)
    a = jnp.asarray(a @ a.T)
    z = jnp.asarray(rng.normal(size=(40, 12)).astype(np.float32))
    w = jnp.asarray(np.linalg.qr(rng.normal(size=(12, 3)))[0].T.astype(np.float32))
    L = sj.linalg
    assert _syevd_modes(L.eigvalsh, a) == ["N"]
    assert _syevd_modes(L.symmetric_eigvals, a) == ["N"]
    assert _syevd_modes(lambda z: L.residual_gram_eigvals(z, w, 4), z) == ["N"]
    assert _syevd_modes(lambda z: sj.isotropy_loss(z, {"a": w}, n_dir=4), z) == ["N"]
    assert _syevd_modes(jax.grad(lambda a: jnp.sum(L.eigvalsh(a) ** 2)), a) == ["V"]
    assert "N" not in _syevd_modes(jax.grad(lambda z: sj.isotropy_loss(z, {"a": w}, n_dir=4)), z)
    np.testing.assert_allclose(L.eigvalsh(a), L.eigh(a)[0], rtol=1e-5, atol=1e-4)
    exact = np.linalg.eigvalsh(_pgp(z, w))[::-1][:4]  # float64
    np.testing.assert_allclose(L.residual_gram_eigvals(z, w, 4), exact, rtol=1e-4)


def _pgp(z, w):
    p = np.eye(z.shape[1]) - np.asarray(w, np.float64).T @ np.asarray(w, np.float64)
    g = np.asarray(z, np.float64).T @ np.asarray(z, np.float64)
    return p @ g @ p
