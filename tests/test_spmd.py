"""The batch-reduction seam on one device: the same programs as the plain expressions.

The sharded behaviour (Explicit and Auto meshes, several processes) is checked in
``tests/test_multidevice.py`` and ``tests/test_multiprocess.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from space_jax import _spmd


def _jaxpr(fn, *args) -> str:
    return str(jax.make_jaxpr(fn)(*args))


@settings(max_examples=20, deadline=None)
@given(
    B=st.integers(1, 9),
    m=st.integers(1, 5),
    n=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_batch_contract_is_a_transpose_product(B, m, n, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(B, m)), rng.normal(size=(B, n))
    np.testing.assert_allclose(_spmd.batch_contract(a, b), a.T @ b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_spmd.batch_contract(a[:, 0], b), a[:, 0] @ b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        _spmd.batch_contract(a[:, 0], b[:, 0]), a[:, 0] @ b[:, 0], rtol=1e-5, atol=1e-5
    )


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 9), d=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_batch_gram_is_the_gram_matrix_on_both_sides_of_the_blocking_width(B, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, d)).astype(np.float32)
    np.testing.assert_allclose(_spmd.batch_gram(x), x.T @ x, rtol=1e-5, atol=1e-5)
    # The same numbers, d columns past the width where column halves are used.
    wide = np.concatenate([x, np.zeros((B, _spmd.BLOCKED_GRAM_MIN), np.float32)], axis=1)
    g = np.asarray(jax.jit(_spmd.batch_gram)(wide))
    np.testing.assert_allclose(g, wide.T @ wide, rtol=1e-5, atol=1e-5)
    h = wide.shape[1] // 2
    np.testing.assert_array_equal(g[:h, h:], g[h:, :h].T)  # one block, mirrored exactly


def test_batch_gram_takes_three_half_width_products_from_the_blocking_width_on():
    narrow = jnp.ones((8, _spmd.BLOCKED_GRAM_MIN - 1))
    wide = jnp.ones((8, _spmd.BLOCKED_GRAM_MIN))
    assert _jaxpr(_spmd.batch_gram, narrow) == _jaxpr(lambda x: x.T @ x, narrow)
    assert _jaxpr(_spmd.batch_gram, wide).count("dot_general") == 3


def test_unsharded_programs_are_unchanged():
    a, b = jnp.ones((6, 3)), jnp.ones((6, 4))
    assert _jaxpr(_spmd.batch_contract, a, b) == _jaxpr(lambda a, b: a.T @ b, a, b)
    assert _jaxpr(_spmd.batch_first, a) == _jaxpr(lambda a: a[0], a)
    assert _jaxpr(_spmd.batch_sum, a) == _jaxpr(lambda a: jnp.sum(a, axis=0), a)
    assert _jaxpr(_spmd.batch_mean, a) == _jaxpr(lambda a: jnp.mean(a, axis=0), a)
    assert _jaxpr(_spmd.replicated, a) == _jaxpr(lambda a: a, a)


@pytest.mark.parametrize("fn", [_spmd.batch_sum, _spmd.batch_mean, _spmd.batch_first])
def test_reductions_keep_trailing_shapes(fn):
    x = jnp.arange(24.0).reshape(4, 3, 2)
    assert fn(x).shape == (3, 2)


def test_one_device_has_no_mesh_and_no_explicit_batch_axes():
    x = jnp.ones((4, 2))
    assert _spmd.mesh_size(x, 1.0, np.ones(3)) == 1
    assert _spmd.explicit_batch_axes(x) is None
    assert _spmd.explicit_batch_axes(jnp.ones(())) is None
    assert jax.jit(lambda x: _spmd.mesh_size(x))(x) == 1
