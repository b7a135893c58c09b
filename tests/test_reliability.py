"""Bad and extreme inputs to sizing, pooling, compute_Q, the losses and moments (issue 14):
each case gives a clear error naming the user's argument, or a finite, correct result."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import space_jax as sj

HALF = [jnp.float16, jnp.bfloat16]


def data(seed: int = 0, B: int = 32, D: int = 8):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(B, D)).astype(np.float32)
    Y = {
        "a": (Z[:, :3] @ rng.normal(size=(3, 5))).astype(np.float32),
        "b": Z[:, 4].copy(),
    }
    return Z, Y


# --------------------------------------------------------------------------------------------
# k_per_q: k in [1, m]


@pytest.mark.parametrize("value", [0.0, 1.0, -2.5e7])
def test_constant_target_gets_k_1(value):
    Y = {"c": np.full((16, 4), value, np.float32), "d": np.full((16,), value)}
    assert sj.k_per_q(Y, 0.9) == {"c": 1, "d": 1}
    assert sj.solve_dims(Y, 4, 0.9, 0.9, k_per_quantity=True) == {"c": (2, 1), "d": (2, 1)}
    m = sj.moments(np.ones((16, 2), np.float32), Y)
    assert sj.k_per_q_from_moments(m, 0.9) == {"c": 1, "d": 1}


@given(
    m=st.integers(1, 6),
    B=st.integers(2, 12),
    threshold=st.sampled_from([1e-6, 0.5, 0.9, 0.999999, 1.0]),
    scale=st.sampled_from([1e-30, 1e-20, 1e-3, 1.0, 1e20, 1e30]),
    seed=st.integers(0, 3),
)
@settings(max_examples=10, deadline=None)
def test_k_is_always_between_1_and_m(m, B, threshold, scale, seed):
    y = np.random.default_rng(seed).normal(size=(B, m)) * scale
    k = sj.k_per_q({"y": y.astype(np.float32)}, threshold)["y"]
    assert 1 <= k <= m
    g = np.cov(y.T, bias=True).reshape(m, m) * B
    if np.abs(g).max() < 1e30:  # a float32 Gram matrix of the data
        k_g = int(sj.explained_rank_from_gram(g.astype(np.float32), threshold))
        assert 1 <= k_g <= m


def test_threshold_one_is_at_most_m_and_the_rank_is_scale_free():
    _, Y = data()
    # Y['a'] has 5 values of rank 3: all of the variance lies in 3 components (spacelearn's
    # rule can give m + 1 = 6 here, when rounding keeps the sum below 1).
    assert sj.k_per_q({"a": Y["a"]}, 1.0)["a"] == 3
    full_rank = np.random.default_rng(1).normal(size=(32, 5)).astype(np.float32)
    for scale in (1e-3, 1.0, 1e3):  # the last cumulative fraction rounds to 1 or stays below
        assert sj.k_per_q({"f": full_rank * np.float32(scale)}, 1.0)["f"] == 5
    base = sj.k_per_q({"a": Y["a"]}, 0.9)["a"]
    for scale in (2.0**66, 2.0**-60, 1e-20, 1e20):  # no overflow, no absolute epsilon
        assert sj.k_per_q({"a": Y["a"] * np.float32(scale)}, 0.9)["a"] == base


@pytest.mark.parametrize("bad", [True, False, np.bool_(True), jnp.array(True), "0.9"])
def test_bool_and_string_thresholds_are_refused(bad):
    _, Y = data()
    with pytest.raises(TypeError, match="threshold: expected a float in"):
        sj.k_per_q(Y, bad)
    with pytest.raises(TypeError, match=r"threshold\['a'\]: expected a float in"):
        sj.k_per_q(Y, {"a": bad})
    with pytest.raises(TypeError, match="variance_threshold: expected a float"):
        sj.optimal_bins(Y, 4, bad)


# --------------------------------------------------------------------------------------------
# 1-D targets are (B, 1) everywhere, errors name Y['q']


def test_one_dimensional_targets_read_as_columns_everywhere():
    Z, Y = data()
    column = {"b": Y["b"][:, None]}
    assert sj.solve_dims({"b": Y["b"]}, 4, 0.9, 0.9) == sj.solve_dims(column, 4, 0.9, 0.9)
    m1, m2 = sj.moments(Z, {"b": Y["b"]}), sj.moments(Z, column)
    assert sj.solve_dims_from_moments(m1, 4, 0.9, 0.9) == sj.solve_dims_from_moments(
        m2, 4, 0.9, 0.9
    )
    quantities = sj.input_to_quantity(3, "avg", energy=lambda u: (u**2).sum(axis=1))
    pooled = quantities(u=Z)["energy"]
    np.testing.assert_allclose(pooled, np.repeat((Z**2).sum(1)[:, None], 3, axis=1), rtol=1e-6)


def test_sizing_errors_name_the_users_argument_and_quantity():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"Y\['field'\]: expected 2 dims") as e:
        sj.solve_dims({"field": rng.normal(size=(8, 3, 4))}, 4, 0.9, 0.9)
    assert "x:" not in str(e.value)
    with pytest.raises(ValueError, match=r"quantity 'e': expected 2 dims"):
        sj.input_to_quantity(2, "avg", e=lambda u: u[:, :, None])(u=rng.normal(size=(8, 4)))
    m = sj.moments(rng.normal(size=(8, 2)), {"f": rng.normal(size=(8, 3, 4))})
    with pytest.raises(ValueError, match=r"m \(quantity 'f'\): per-sample target shape \(3, 4\)"):
        sj.solve_dims_from_moments(m, 4, 0.9, 0.9)


# --------------------------------------------------------------------------------------------
# Empty targets and empty pooled axes


def test_empty_targets_and_axes_raise_value_errors():
    Z, _ = data()
    empty = np.zeros((32, 0), np.float32)
    for call in (
        lambda: sj.k_per_q({"e": empty}),
        lambda: sj.solve_dims({"e": empty}, 4, 0.9, 0.9),
        lambda: sj.solve_subspaces(Z, {"e": empty}, k=1),
        lambda: sj.moments(Z, {"e": empty}),
    ):
        with pytest.raises(ValueError, match=r"Y\['e'\]: empty target of shape \(32, 0\)"):
            call()
    with pytest.raises(ValueError, match="cannot pool an empty axis"):
        sj.pool(empty, 2)
    with pytest.raises(ValueError, match="cannot pool an empty axis"):
        sj.pool(np.zeros((2, 1, 0, 3), np.float32), 2, "max")


# --------------------------------------------------------------------------------------------
# Half precision: computed in float32, returned in the input dtype


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_sizing_and_solvers(dtype):
    Z, Y = data()
    Zh, Yh = jnp.asarray(Z, dtype), {q: jnp.asarray(y, dtype) for q, y in Y.items()}
    Y32 = {q: np.asarray(y, np.float32) for q, y in Yh.items()}
    assert sj.k_per_q(Yh) == sj.k_per_q(Y32)
    assert sj.solve_dims(Yh, 4, 0.9, 0.9) == sj.solve_dims(Y32, 4, 0.9, 0.9)
    space = sj.solve_subspaces(Zh, Yh, k=2)
    reference = sj.solve_subspaces(jnp.asarray(Zh, jnp.float32), Y32, k=2)
    for q in Y:
        assert space.W[q].dtype == dtype and space.A[q].dtype == dtype
        # Same subspace up to the half-precision rounding of the result.
        overlap = jnp.linalg.svd(
            space.W[q].astype(jnp.float32) @ reference.W[q].T, compute_uv=False
        )
        np.testing.assert_allclose(overlap, 1.0, atol=2e-2)
    if dtype != jnp.float16:
        return  # the rest goes through the same two casts
    for out in (sj.singular_values(Zh), sj.linalg.eigh(jnp.eye(3, dtype=dtype))):
        for leaf in jax.tree.leaves(out):
            assert leaf.dtype == dtype
            assert bool(jnp.all(jnp.isfinite(leaf)))
    assert bool(jnp.isfinite(sj.combined_loss(Zh, reference.W, reference.A, Yh)))
    m = sj.moments(Zh, Yh)
    assert m.zz.dtype == jnp.float32  # accumulated in float32
    assert bool(jnp.all(jnp.isfinite(sj.solve_subspaces_from_moments(m, k=2).W["a"])))


def test_half_precision_results_that_overflow_are_refused():
    Z, Y = data()
    tiny = jnp.asarray(Z * 1e-6, jnp.float16)  # decoders of ~1e6 do not fit in float16
    with pytest.raises(ValueError, match="solve_subspaces: the result overflows float16.*pass Z"):
        sj.solve_subspaces(tiny, {q: jnp.asarray(y, jnp.float16) for q, y in Y.items()}, k=2)


# --------------------------------------------------------------------------------------------
# combined_loss weights


def test_combined_loss_weights_must_be_four_or_a_dict_by_name():
    Z, Y = data()
    space = sj.solve_subspaces(Z, Y, k=2)
    loss = functools.partial(sj.combined_loss, Z, space.W, space.A, Y)
    for bad in [(1.0, 0.0, 0.0), (1.0,) * 5, (), jnp.ones(3), jnp.ones((2, 2))]:
        with pytest.raises(ValueError, match="weights: expected exactly 4 weights"):
            loss(weights=bad)
    for bad in [1.0, "1111", object()]:
        with pytest.raises(TypeError, match="weights: expected a LossWeights"):
            loss(weights=bad)
    with pytest.raises(ValueError, match=r"weights: unknown loss terms \['align'\]"):
        loss(weights={"align": 1.0})
    by_name = loss(weights={"alignment": 2.0, "stability": 0.0})
    np.testing.assert_allclose(by_name, loss(weights=(2.0, 1.0, 1.0, 0.0)), rtol=1e-6)
    np.testing.assert_allclose(loss(weights=jnp.ones(4)), loss(), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# compute_Q


def test_compute_q_refuses_functions_that_would_replace_each_other():
    with pytest.raises(ValueError, match="both named '<lambda>'"):
        sj.compute_Q(lambda u: u, lambda u: 2 * u)

    def fa(u):
        return u

    with pytest.raises(ValueError, match="'fa' is given both positionally"):
        sj.compute_Q(fa, fa=lambda u: 2 * u)
    with pytest.raises(TypeError, match="has no __name__"):
        sj.compute_Q(functools.partial(fa))
    with pytest.raises(TypeError, match="positional-only parameters"):
        sj.compute_Q(f=lambda u, /: u)
    with pytest.raises(TypeError, match="is not callable"):
        sj.compute_Q(3)


def test_compute_q_passes_every_argument_to_var_keyword_functions():
    def everything(**kwargs):
        return sorted(kwargs)

    def some(u, *args, scale=1.0, **kwargs):
        return (u * scale, sorted(kwargs))

    def only_u(u):
        return u

    q = sj.compute_Q(everything, some, only_u)
    out = q(u=2.0, v=3.0, scale=2.0)
    assert out == {"everything": ["scale", "u", "v"], "some": (4.0, ["v"]), "only_u": 2.0}


def test_compute_q_reports_missing_arguments_and_type_mismatches():
    q = sj.compute_Q(a=lambda u, v: u + v)
    with pytest.raises(TypeError, match=r"quantity 'a' needs the keyword arguments \['v'\]"):
        q(u=1.0)

    def f(x: int):
        return x

    def g(x: float):
        return x

    with pytest.raises(TypeError, match="Type mismatch for argument 'x'"):
        sj.compute_Q(f, g)


# --------------------------------------------------------------------------------------------
# merge_moments


@pytest.mark.parametrize("count", [-1.0, np.nan, np.inf])
def test_merge_moments_refuses_bad_concrete_counts(count):
    Z, Y = data()
    m = sj.moments(Z, Y)
    bad = sj.Moments(
        jnp.asarray(count, m.zz.dtype), m.z_mean, m.zz, m.y_mean, m.zy, m.yy, m.target_shapes
    )
    with pytest.raises(ValueError, match="b: count must be a finite number >= 0"):
        sj.merge_moments(m, bad)
    with pytest.raises(ValueError, match="a: count must be a finite number >= 0"):
        sj.merge_moments(bad, m)
    # Traced counts are the caller's: merging stays jittable.
    merged = jax.jit(sj.merge_moments)(m, m)
    assert float(merged.count) == 2 * float(m.count)
