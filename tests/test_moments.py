"""Streaming moments: merging chunks gives the whole batch, in any order, in float32 far from
the origin, inside scan and jit; sizing from moments; bad input."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import problem
from hypothesis import given, settings
from hypothesis import strategies as st

import space_jax as sj

SIZES = (7, 293, 1, 599, 600)  # 1500 samples in uneven chunks
K = {"field": 3, "energy": 2}
# Same bound as test_subspaces: basis-independent comparisons, well-separated spectra.
TOL = {np.float64: 1e-9, np.float32: 1e-4}


def chunks(Z, Y, sizes=SIZES):
    edges = np.cumsum((0, *sizes))
    return [
        (Z[a:b], {q: y[a:b] for q, y in Y.items()})
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]


def merge_forward(ms):
    return functools.reduce(sj.merge_moments, ms)


def merge_backward(ms):
    return functools.reduce(lambda acc, m: sj.merge_moments(m, acc), ms[::-1])


def merge_tree(ms):
    while len(ms) > 1:
        pairs = [sj.merge_moments(a, b) for a, b in zip(ms[::2], ms[1::2], strict=False)]
        ms = pairs + ([ms[-1]] if len(ms) % 2 else [])
    return ms[0]


MERGES = {"forward": merge_forward, "backward": merge_backward, "tree": merge_tree}


def projectors(W):
    return {q: np.asarray(w, np.float64).T @ np.asarray(w, np.float64) for q, w in W.items()}


def predictions(Z, space):
    Z = np.asarray(Z, np.float64)
    Zc = Z - Z.mean(0)
    return {
        q: Zc @ np.asarray(w, np.float64).T @ np.asarray(space.A[q], np.float64)
        for q, w in space.W.items()
    }


def close(got: dict, want: dict, tol):
    assert set(got) == set(want)  # Space through jit/tree_map comes back in sorted key order
    for q in got:
        g, w = np.asarray(got[q], np.float64), np.asarray(want[q], np.float64)
        assert g.shape == w.shape, q
        scale = max(np.abs(w).max(), 1e-30)
        np.testing.assert_allclose(g / scale, w / scale, atol=tol, err_msg=q)


def assert_same_space(got, want, Z, tol):
    close(projectors(got.W), projectors(want.W), tol)
    close(predictions(Z, got), predictions(Z, want), tol)
    close({q: np.abs(v) for q, v in got.V.items()}, {q: np.abs(v) for q, v in want.V.items()}, tol)


def assert_same_moments(got, want, rtol):
    assert got.names == want.names
    assert got.target_shapes == want.target_shapes
    np.testing.assert_allclose(float(got.count), float(want.count), rtol=0)
    scale_z = np.abs(np.asarray(want.zz)).max()
    np.testing.assert_allclose(got.z_mean, want.z_mean, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(got.zz, want.zz, atol=rtol * scale_z)
    for q in want.names:
        scale = np.abs(np.asarray(want.yy[q])).max()
        np.testing.assert_allclose(got.y_mean[q], want.y_mean[q], rtol=rtol, atol=rtol)
        np.testing.assert_allclose(got.zy[q], want.zy[q], atol=rtol * np.sqrt(scale * scale_z))
        np.testing.assert_allclose(got.yy[q], want.yy[q], atol=rtol * scale)


@pytest.fixture(scope="module")
def data():
    return problem(3, B=sum(SIZES), D=16)


@pytest.mark.parametrize("order", list(MERGES))
def test_merged_chunks_give_the_whole_batch_space(data, order, dtype):
    Z, Y = (data[0].astype(dtype), {q: y.astype(dtype) for q, y in data[1].items()})
    merged = MERGES[order]([sj.moments(z, y) for z, y in chunks(Z, Y)])
    whole = sj.moments(Z, Y)
    assert float(merged.count) == sum(SIZES)
    assert merged.zz.dtype == dtype
    assert_same_moments(merged, whole, 1e-12 if dtype == np.float64 else 1e-5)
    got = sj.solve_subspaces_from_moments(merged, K)
    want = sj.solve_subspaces(Z, Y, k=K)
    assert list(got) == list(Y)
    for q in Y:
        assert got.W[q].shape == want.W[q].shape and got.A[q].shape == want.A[q].shape
    assert_same_space(got, want, Z, TOL[dtype])


@pytest.mark.parametrize("order", ["forward", "tree"])
def test_far_from_origin_in_float32_matches_float64(data, order):
    Z64, Y64 = data[0] + 1e3, {q: y + 1e3 for q, y in data[1].items()}
    Z32, Y32 = Z64.astype(np.float32), {q: y.astype(np.float32) for q, y in Y64.items()}
    merged = MERGES[order]([sj.moments(z, y) for z, y in chunks(Z32, Y32)])
    got = sj.solve_subspaces_from_moments(merged, K)
    with jax.enable_x64(True):
        want = sj.solve_subspaces(Z64, Y64, k=K)
        want_m = sj.moments(Z64, Y64)
        # (jax.tree.map would rebuild Space's dicts in sorted key order)
        want = sj.Space(*({q: np.asarray(x[q]) for q in x} for x in (want.W, want.A, want.V)))
        want_zz = np.asarray(want_m.zz)
    # Rounding the inputs to float32 at 1e3 moves them by up to 6e-5 (relative to a unit
    # spread); the fit stays within ~3e-6 of the float64 one, compared at the float32 bound.
    assert_same_space(got, want, Z64, TOL[np.float32])
    np.testing.assert_allclose(merged.zz, want_zz, atol=1e-4 * np.abs(want_zz).max())
    # A sum of raw products would not come close in float32 at this offset.
    raw = Z32.T @ Z32 - len(Z32) * np.outer(Z32.mean(0), Z32.mean(0))
    assert np.abs(raw - want_zz).max() > 100 * np.abs(np.asarray(merged.zz) - want_zz).max()


def test_merging_inside_scan_under_jit(data):
    Z, Y = data[0].astype(np.float32), {q: y.astype(np.float32) for q, y in data[1].items()}
    Zs = Z.reshape(5, 300, -1)
    Ys = {q: y.reshape(5, 300, *y.shape[1:]) for q, y in Y.items()}

    @jax.jit
    def fold(Zs, Ys):
        # count 0 is the identity; jit hands Ys over with sorted keys, merge keeps init's order
        init = jax.tree.map(jnp.zeros_like, sj.moments(Zs[0], {q: Y[q][:300] for q in Y}))

        def step(acc, batch):
            return sj.merge_moments(acc, sj.moments(*batch)), None

        return jax.lax.scan(step, init, (Zs, Ys))[0]

    merged = fold(Zs, Ys)
    assert merged.names == tuple(Y)
    assert_same_moments(merged, sj.moments(Z, Y), 1e-5)
    solve = jax.jit(lambda m: sj.solve_subspaces_from_moments(m, K))
    assert_same_space(solve(merged), sj.solve_subspaces(Z, Y, k=K), Z, TOL[np.float32])


def test_moments_vmap_over_problems(data):
    Z, Y = (
        data[0][:40].astype(np.float32),
        {q: y[:40].astype(np.float32) for q, y in data[1].items()},
    )
    Zb = np.stack([Z, 2 * Z - 1])
    Yb = {q: np.stack([y, y[::-1]]) for q, y in Y.items()}

    def fit(Z, Y):
        m = sj.merge_moments(
            sj.moments(Z[:15], {q: y[:15] for q, y in Y.items()}),
            sj.moments(Z[15:], {q: y[15:] for q, y in Y.items()}),
        )
        return sj.solve_subspaces_from_moments(m, K)

    batched = jax.vmap(fit)(Zb, Yb)
    for i in range(2):
        one = sj.Space(*({q: x[q][i] for q in Y} for x in (batched.W, batched.A, batched.V)))
        Zi, Yi = Zb[i], {q: y[i] for q, y in Yb.items()}
        assert_same_space(one, sj.solve_subspaces(Zi, Yi, k=K), Zi, TOL[np.float32])


def test_stream_moments_folds_a_generator(data):
    Z, Y = data[0].astype(np.float32), {q: y.astype(np.float32) for q, y in data[1].items()}
    parts = chunks(Z, Y)
    streamed = sj.stream_moments(iter(parts), progress=True)
    assert streamed.names == tuple(Y)
    assert_same_moments(streamed, sj.moments(Z, Y), 1e-5)
    resumed = sj.stream_moments(iter(parts[2:]), initial=sj.stream_moments(parts[:2]))
    assert_same_moments(resumed, streamed, 1e-6)


def test_sizing_from_moments_matches_the_targets(data):
    Z, Y = data
    m = merge_tree([sj.moments(z, y) for z, y in chunks(Z, Y)])
    for kwargs in ({}, {"threshold": {"field": 0.5}, "default_threshold": 0.99}):
        assert sj.k_per_q_from_moments(m, **kwargs) == sj.k_per_q(Y, **kwargs)
    assert sj.k_per_q_from_moments(m, 0.8, per_quantity=False) == sj.k_per_q(
        Y, 0.8, per_quantity=False
    )
    for per_q in (False, True):
        args = (4, {"field": 0.8}, 0.9)
        kwargs = {
            "bin_default_threshold": 0.95,
            "pool_per_quantity": per_q,
            "k_per_quantity": per_q,
        }
        assert sj.solve_dims_from_moments(m, *args, **kwargs) == sj.solve_dims(Y, *args, **kwargs)


# --- bad input ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    Z, Y = problem(4, B=8, D=6)
    return Z.astype(np.float32), {q: y.astype(np.float32) for q, y in Y.items()}


def test_merging_different_quantities_is_an_error(small):
    Z, Y = small
    with pytest.raises(ValueError, match="different quantities.*missing \\['energy'\\]"):
        sj.merge_moments(sj.moments(Z, Y), sj.moments(Z, {"field": Y["field"]}))


def test_merging_different_latent_sizes_is_an_error(small):
    Z, Y = small
    with pytest.raises(ValueError, match="different latent sizes.*D=6.*D=5"):
        sj.merge_moments(sj.moments(Z, Y), sj.moments(Z[:, :5], Y))


def test_merging_different_target_shapes_is_an_error(small):
    Z, Y = small
    flat = {"field": Y["field"].reshape(8, -1), "energy": Y["energy"]}
    with pytest.raises(ValueError, match="'field'.*shape \\(16,\\).*\\(1, 4, 4\\)"):
        sj.merge_moments(sj.moments(Z, Y), sj.moments(Z, flat))


def test_merging_something_else_is_an_error(small):
    with pytest.raises(TypeError, match="b: expected a Moments"):
        sj.merge_moments(sj.moments(*small), {"count": 3})


def test_empty_batch_is_an_error(small):
    Z, Y = small
    with pytest.raises(ValueError, match="Z: empty batch"):
        sj.moments(Z[:0], {q: y[:0] for q, y in Y.items()})
    with pytest.raises(ValueError, match="batches\\[1\\]: Z: empty batch"):
        sj.stream_moments([(Z, Y), (Z[:0], {q: y[:0] for q, y in Y.items()})])


def test_nan_batch_is_an_error(small):
    Z, Y = small
    bad = {"field": Y["field"], "energy": Y["energy"].copy()}
    bad["energy"][3, 1] = np.nan
    with pytest.raises(ValueError, match="Y\\['energy'\\]: contains NaN"):
        sj.moments(Z, bad)
    for position in (1, 2):  # a middle batch, and the last one (checked after the loop)
        batches = [(Z, Y)] * 3
        batches[position] = (Z, bad)
        with pytest.raises(ValueError, match=f"batches\\[{position}\\]: contains NaN"):
            sj.stream_moments(batches)
    inf = Z.copy()
    inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="batches\\[0\\]: contains NaN or infinity"):
        sj.stream_moments([(inf, Y)])


def test_no_batches_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        sj.stream_moments(iter([]))


def test_a_batch_that_is_not_a_pair_is_an_error(small):
    with pytest.raises(TypeError, match="batches\\[0\\]: expected a pair"):
        sj.stream_moments([small[0]])


def test_mismatched_batch_sizes_are_an_error(small):
    Z, Y = small
    with pytest.raises(ValueError, match="Y\\['energy'\\]: batch size 7"):
        sj.moments(Z, {"field": Y["field"], "energy": Y["energy"][:7]})


def test_solving_one_sample_is_an_error(small):
    Z, Y = small
    with pytest.raises(ValueError, match="at least 2 samples, got count=1"):
        sj.solve_subspaces_from_moments(sj.moments(Z[:1], {q: y[:1] for q, y in Y.items()}))


def test_bad_k_is_an_error(small):
    with pytest.raises(ValueError, match="k: expected an int >= 1"):
        sj.solve_subspaces_from_moments(sj.moments(*small), 0)


def test_max_pooling_cannot_be_sized_from_moments(small):
    with pytest.raises(ValueError, match="pooling_mode: only 'avg'"):
        sj.solve_dims_from_moments(sj.moments(*small), 4, 0.9, 0.9, pooling_mode="max")


def test_bad_threshold_is_an_error(small):
    with pytest.raises(ValueError, match="threshold: expected a float in \\(0, 1\\]"):
        sj.k_per_q_from_moments(sj.moments(*small), 1.5)


# --- properties -----------------------------------------------------------------------------

_PROP_Z, _PROP_Y = problem(5, B=48, D=4, dims={"a": (3,), "b": (2,)})
_PROP_Z = (_PROP_Z + 50.0).astype(np.float32)
_PROP_Y = {q: (y - 20.0).astype(np.float32) for q, y in _PROP_Y.items()}


def numpy_moments(Z, Y):
    """Two-pass float64 reference."""
    Zc = Z.astype(np.float64) - Z.astype(np.float64).mean(0)
    Yc = {q: y.reshape(len(y), -1).astype(np.float64) for q, y in Y.items()}
    Yc = {q: y - y.mean(0) for q, y in Yc.items()}
    return sj.Moments(
        count=float(len(Z)),
        z_mean=Z.astype(np.float64).mean(0),
        zz=Zc.T @ Zc,
        y_mean={q: y.reshape(len(y), -1).astype(np.float64).mean(0) for q, y in Y.items()},
        zy={q: Zc.T @ y for q, y in Yc.items()},
        yy={q: y.T @ y for q, y in Yc.items()},
        target_shapes={q: y.shape[1:] for q, y in Y.items()},
    )


def _random_tree_merge(draw, ms):
    while len(ms) > 1:
        i = draw(st.integers(0, len(ms) - 2))
        ms = [*ms[:i], sj.merge_moments(ms[i], ms[i + 1]), *ms[i + 2 :]]
    return ms[0]


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_merging_is_associative_and_order_independent(data):
    # Few distinct chunk sizes keep the number of compiled shapes small.
    sizes = data.draw(st.lists(st.sampled_from([1, 2, 3, 5, 8]), min_size=1, max_size=6))
    n = sum(sizes)
    Z, Y = _PROP_Z[:n], {q: y[:n] for q, y in _PROP_Y.items()}
    ms = [sj.moments(z, y) for z, y in chunks(Z, Y, sizes)]
    order = data.draw(st.permutations(range(len(ms))), label="order")
    merged = _random_tree_merge(data.draw, [ms[i] for i in order])
    assert_same_moments(merged, numpy_moments(Z, Y), 1e-5)
