"""The four losses: parity with spacelearn, invariances, gradients, jit/vmap, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import spacelearn
from conftest import problem, random_bases, to_jax, to_torch
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from spacelearn import loss as ref_loss

import space_jax as sj

KS = {"field": 3, "energy": 2}


def setup(dtype, seed=0, B=64, D=16):
    """A problem with decoders fitted by least squares, as in training."""
    Z, Y = problem(seed, B=B, D=D, dtype=dtype)
    W = random_bases(np.random.default_rng(seed + 1), D, KS, dtype)
    A = {q: np.asarray(a) for q, a in sj.fit_decoders(to_jax(W), Z, to_jax(Y)).items()}
    W_prev = {q: (w + 0.05).astype(dtype) for q, w in W.items()}
    return Z, W, A, Y, W_prev


def ours(name, Z, W, A, Y, W_prev, n_dir=8):
    return {
        "alignment": lambda: sj.alignment_loss(Z, W, A, Y),
        "disentanglement": lambda: sj.disentanglement_loss(Z, W, order=tuple(W)),
        "isotropy": lambda: sj.isotropy_loss(Z, W, n_dir=n_dir),
        "stability": lambda: sj.stability_loss(W, W_prev),
        "combined": lambda: sj.combined_loss(Z, W, A, Y, W_prev, n_dir=n_dir, order=tuple(W)),
    }[name]()


def reference(name, Z, W, A, Y, W_prev, n_dir=8):
    return {
        "alignment": lambda: ref_loss.alignment_loss(Z, W, A, Y),
        "disentanglement": lambda: ref_loss.disentanglement_loss(Z, W),
        "isotropy": lambda: ref_loss.isotropy_loss(Z, W, n_dir=n_dir),
        "stability": lambda: ref_loss.stability_loss(W, W_prev),
        "combined": lambda: spacelearn.combined_loss(Z, W, A, Y, W_prev, n_dir=n_dir),
    }[name]()


# float64: our results are exact to rounding (~1e-15); 1e-9 leaves room for op order. The
# reference accumulates its disentanglement loss in a float32 tensor even for float64 inputs,
# so that term (and the sum that contains it) only agrees to float32 rounding (~1e-7).
# float32: sums of B*m squares in a different order, and the isotropy spectrum through the Gram
# matrix, whose eigenvalues carry an absolute error of ~eps * s_max**2: 1e-4 relative.
TOL = {np.float64: 1e-9, np.float32: 1e-4}
LOOSE64 = {"disentanglement", "combined"}

LOSSES = ["alignment", "disentanglement", "isotropy", "stability", "combined"]


@pytest.mark.parametrize("name", LOSSES)
def test_values_match_spacelearn(name, dtype):
    Z, W, A, Y, W_prev = setup(dtype)
    got = ours(name, *to_jax((Z, W, A, Y, W_prev)))
    want = reference(name, *to_torch((Z, W, A, Y, W_prev))).double().item()
    rtol = 1e-6 if (dtype is np.float64 and name in LOOSE64) else TOL[dtype]
    assert got.dtype == dtype
    np.testing.assert_allclose(float(got), want, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("wrt", ["Z", "W", "A"])
def test_combined_gradients_match_spacelearn(wrt, dtype):
    Z, W, A, Y, W_prev = setup(dtype, seed=3)
    # Fitted decoders sit at the least-squares optimum, where the gradient w.r.t. A is only
    # rounding noise; move away from it so the comparison means something.
    A = {q: (a + 0.1).astype(dtype) for q, a in A.items()}
    args = dict(zip("Z W A Y W_prev".split(), to_jax((Z, W, A, Y, W_prev)), strict=True))
    order = tuple(W)  # spacelearn's pair order is the dict order

    def loss(x):
        return sj.combined_loss(**{**args, wrt: x}, n_dir=8, order=order)

    grad = jax.grad(loss)(args[wrt])

    t = dict(zip("Z W A Y W_prev".split(), to_torch((Z, W, A, Y, W_prev)), strict=True))
    leaves = [t[wrt]] if wrt == "Z" else list(t[wrt].values())
    for leaf in leaves:
        leaf.requires_grad_(True)
    spacelearn.combined_loss(t["Z"], t["W"], t["A"], t["Y"], t["W_prev"], n_dir=8).backward()
    want = t[wrt].grad if wrt == "Z" else {q: v.grad for q, v in t[wrt].items()}

    # Gradients of the float32-accumulated disentanglement term carry float32 rounding even in
    # float64; relative to the largest gradient entry that is ~1e-7.
    rtol = {np.float64: 1e-6, np.float32: 2e-3}[dtype]
    for g, w in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(want), strict=True):
        w = w.double().numpy()
        scale = np.abs(w).max()
        np.testing.assert_allclose(np.asarray(g, np.float64) / scale, w / scale, atol=rtol)


def test_gradients_match_finite_differences():
    with jax.enable_x64(True):
        Z, W, A, Y, W_prev = to_jax(setup(np.float64, seed=5))

        def loss(z, w, a):
            return sj.combined_loss(z, w, a, Y, W_prev, n_dir=6)

        check_grads(loss, (Z, W, A), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_finite_gradients_when_n_dir_exceeds_rank():
    # B=8 samples in D=16: the residual has rank <= 7 - k, far below n_dir=32, and the
    # projected Gram matrix has many repeated zero eigenvalues.
    Z, W, A, Y, W_prev = to_jax(setup(np.float32, B=8, D=16))
    grads = jax.grad(lambda z, w: sj.combined_loss(z, w, A, Y, W_prev), argnums=(0, 1))(Z, W)
    for g in jax.tree_util.tree_leaves(grads):
        assert bool(jnp.all(jnp.isfinite(g)))
    # and a constant batch: everything is rank zero
    g = jax.grad(lambda z: sj.isotropy_loss(z, W))(jnp.ones_like(Z))
    assert bool(jnp.all(jnp.isfinite(g)))


def test_isotropy_uses_exact_spectrum():
    # Against a direct SVD of the residual, at a size where spacelearn's "auto" would sketch.
    rng = np.random.default_rng(7)
    Z = rng.normal(size=(600, 200)) * np.linspace(3, 0.2, 200)
    W = random_bases(rng, 200, {"a": 5})
    R = (Z - Z.mean(0)) @ (np.eye(200) - W["a"].T @ W["a"])
    s = np.linalg.svd(R, compute_uv=False)[:32]
    s = s / (s.mean() + 1e-8)
    with jax.enable_x64(True):
        got = sj.isotropy_loss(jnp.asarray(Z), to_jax(W))
    np.testing.assert_allclose(float(got), np.mean((s - 1) ** 2), rtol=1e-9)


def pad(tree, extra: int):
    return {
        q: jnp.concatenate([x, jnp.zeros((extra, x.shape[1]), x.dtype)]) for q, x in tree.items()
    }


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), extra=st.integers(1, 4))
def test_losses_unchanged_by_zero_padding(seed, extra):
    Z, W, A, Y, W_prev = to_jax(setup(np.float32, seed=seed))
    Wp, Ap, Wpp = pad(W, extra), pad(A, extra), pad(W_prev, extra)
    for name in LOSSES:
        np.testing.assert_allclose(
            ours(name, Z, Wp, Ap, Y, Wpp), ours(name, Z, W, A, Y, W_prev), rtol=1e-5, atol=1e-7
        )


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), z_shift=st.floats(-50, 50), y_shift=st.floats(-50, 50))
def test_losses_invariant_to_constant_offsets(seed, z_shift, y_shift):
    with jax.enable_x64(True):
        Z, W, A, Y, W_prev = to_jax(setup(np.float64, seed=seed))
        Ys = {q: y + y_shift for q, y in Y.items()}
        for name in LOSSES:
            np.testing.assert_allclose(
                ours(name, Z + z_shift, W, A, Ys, W_prev),
                ours(name, Z, W, A, Y, W_prev),
                rtol=1e-8,
                atol=1e-10,
            )


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_alignment_and_isotropy_invariant_to_rotations_inside_a_subspace(seed):
    # Rotating the basis of a subspace (and its decoder with it) leaves the span, the
    # predictions Zc W.T A and the residual unchanged.
    with jax.enable_x64(True):
        Z, W, A, Y, _ = to_jax(setup(np.float64, seed=seed))
        rng = np.random.default_rng(seed)
        Wr, Ar = dict(W), dict(A)
        for q in W:
            R, _ = np.linalg.qr(rng.normal(size=(W[q].shape[0],) * 2))
            Wr[q], Ar[q] = R.T @ W[q], R.T @ A[q]
        for name in ("alignment", "isotropy"):
            np.testing.assert_allclose(
                ours(name, Z, Wr, Ar, Y, None), ours(name, Z, W, A, Y, None), rtol=1e-9
            )


def test_weights_scale_terms():
    Z, W, A, Y, W_prev = to_jax(setup(np.float32))
    terms = [ours(n, Z, W, A, Y, W_prev) for n in LOSSES[:4]]
    weights = sj.LossWeights(2.0, 0.0, 0.5, 3.0)
    got = sj.combined_loss(Z, W, A, Y, W_prev, n_dir=8, weights=weights, order=tuple(W))
    expected = sum(w * t for w, t in zip(weights, terms, strict=True))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_jit_and_vmap():
    Z, W, A, Y, W_prev = to_jax(setup(np.float32))
    f = jax.jit(lambda z, w, a, y, wp: sj.combined_loss(z, w, a, y, wp, n_dir=8))
    eager = sj.combined_loss(Z, W, A, Y, W_prev, n_dir=8)
    np.testing.assert_allclose(f(Z, W, A, Y, W_prev), eager, rtol=1e-6)
    # vmap over a stack of batches and over a stack of weights
    Zs = jnp.stack([Z, 2 * Z, Z[::-1]])
    Ys = jax.tree_util.tree_map(lambda y: jnp.stack([y, y, y[::-1]]), Y)
    batched = jax.vmap(f, in_axes=(0, None, None, 0, None))(Zs, W, A, Ys, W_prev)
    for i in range(3):
        one = f(Zs[i], W, A, {q: y[i] for q, y in Ys.items()}, W_prev)
        np.testing.assert_allclose(batched[i], one, rtol=1e-5)
    ws = sj.LossWeights(*(jnp.linspace(0, 1, 4) for _ in range(4)))
    swept = jax.vmap(lambda w: sj.combined_loss(Z, W, A, Y, W_prev, n_dir=8, weights=w))(ws)
    assert swept.shape == (4,) and float(swept[0]) == 0.0


def test_single_quantity_has_no_disentanglement_and_no_previous_has_no_stability():
    Z, W, A, Y, _ = to_jax(setup(np.float32))
    one = {"field": W["field"]}
    assert float(sj.disentanglement_loss(Z, one)) == 0.0
    assert float(sj.stability_loss(W, None)) == 0.0


# --- bad input -----------------------------------------------------------------------------


def test_rejects_mismatched_keys():
    Z, W, A, Y, W_prev = to_jax(setup(np.float32))
    with pytest.raises(ValueError, match=r"A: quantities must match W's.*missing \['energy'\]"):
        sj.alignment_loss(Z, W, {"field": A["field"]}, Y)
    with pytest.raises(ValueError, match=r"Y: quantities must match"):
        sj.combined_loss(Z, W, A, {**Y, "extra": Y["field"]})
    with pytest.raises(ValueError, match="W_prev: quantities must match"):
        sj.stability_loss(W, {"field": W["field"]})


def test_rejects_batch_and_latent_size_mismatches():
    Z, W, A, Y, _ = to_jax(setup(np.float32))
    with pytest.raises(ValueError, match=r"Y\['field'\]: batch size 63 does not match"):
        sj.alignment_loss(Z, W, A, {**Y, "field": Y["field"][:-1]})
    with pytest.raises(ValueError, match=r"W\['energy'\]: expected a basis of shape \(k, D=16\)"):
        sj.isotropy_loss(Z, {**W, "energy": W["energy"][:, :-1]})
    with pytest.raises(
        ValueError, match=r"A\['field'\]: expected a decoder of shape \(k=3, m=16\)"
    ):
        sj.alignment_loss(Z, W, {**A, "field": A["field"][:, :-1]}, Y)
    with pytest.raises(ValueError, match=r"W_prev\['field'\]: expected shape"):
        sj.stability_loss(W, {**W, "field": W["field"][:-1]})


def test_rejects_wrong_rank_small_batch_integers_and_bad_n_dir():
    Z, W, A, Y, _ = to_jax(setup(np.float32))
    with pytest.raises(ValueError, match=r"Z: expected latents of shape \(B, D\)"):
        sj.disentanglement_loss(Z[None], W)
    with pytest.raises(ValueError, match="at least 2 samples, got B=1"):
        sj.combined_loss(Z[:1], W, A, {q: y[:1] for q, y in Y.items()})
    with pytest.raises(TypeError, match="Z: expected a floating-point array, got dtype int32"):
        sj.isotropy_loss(Z.astype(jnp.int32), W)
    with pytest.raises(ValueError, match="n_dir: expected an int >= 1, got 0"):
        sj.isotropy_loss(Z, W, n_dir=0)
    with pytest.raises(ValueError, match="W: expected at least one quantity"):
        sj.isotropy_loss(Z, {})


def test_shape_errors_raise_at_trace_time():
    Z, W, A, Y, _ = to_jax(setup(np.float32))
    f = jax.jit(sj.alignment_loss)
    with pytest.raises(ValueError, match="batch size"):
        f(Z, W, A, {**Y, "energy": Y["energy"][:10]})


@pytest.mark.parametrize("scale", [1e20, 1e-20, 2.0**100])
def test_scale_invariant_terms_do_not_overflow(scale):
    # The disentanglement and isotropy terms are scale-invariant; the Gram matrix of latents near
    # 1e20 overflows float32 (B * 1e40), so the statistics are formed from latents divided by a
    # power of two. The reference (an SVD of the residual) gives its scale-1 value at 1e20 and,
    # where its 1e-8 stabilisers dominate (latents near 1e-20), 1 and 0: so do we.
    Z, W, A, Y, _ = setup(np.float32)
    Zs = (Z.astype(np.float64) * scale).astype(np.float32)
    for name in ("disentanglement", "isotropy"):
        got = float(ours(name, *to_jax((Zs, W, A, Y)), None))
        want = float(reference(name, *to_torch((Zs, W, A, Y)), None))
        assert np.isfinite(got), name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=name)
    # The combined loss's gradient of the scale-invariant terms stays finite as well.
    weights = sj.LossWeights(alignment=0.0, stability=0.0)
    grad = jax.grad(sj.combined_loss)(*to_jax((Zs, W, A, Y)), n_dir=8, weights=weights)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_scaling_is_exact_at_moderate_scales():
    # Dividing by a power of two changes no rounding: the loss at scale 1 and at scale 2**k
    # (where the reference's 1e-8 stabilisers are negligible) agree to float32 rounding.
    Z, W, A, Y, _ = setup(np.float32)
    Z, W = to_jax((Z, W))
    base = sj.disentanglement_loss(Z, W) + sj.isotropy_loss(Z, W, n_dir=8)
    scaled = sj.disentanglement_loss(Z * 2.0**40, W) + sj.isotropy_loss(Z * 2.0**40, W, n_dir=8)
    np.testing.assert_allclose(scaled, base, rtol=1e-6)
