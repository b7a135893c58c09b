"""space_torch_bridge._convert: zero copies where XLA can share, one copy where it cannot."""

from __future__ import annotations

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from space_torch_bridge import _convert
from space_torch_bridge._convert import precision_scope, shareable, to_jax, to_torch

_double = jax.jit(lambda x: x * 2)


def shares(array: jax.Array, tensor: torch.Tensor) -> bool:
    return array.unsafe_buffer_pointer() == tensor.data_ptr()


def assert_reads_as(array: jax.Array, tensor: torch.Tensor) -> None:
    """The JAX array holds the tensor's values, also after an XLA computation on it."""
    expected = tensor.detach().to(torch.float64 if tensor.dtype == torch.float64 else torch.float32)
    np.testing.assert_array_equal(np.asarray(array), expected.numpy())
    np.testing.assert_array_equal(np.asarray(_double(array)), 2 * expected.numpy())


# --- shared without copies -----------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(8, 5),
        lambda: torch.randn(5, 8).T,  # a transposition is a compact layout XLA accepts
        lambda: torch.randn(2, 3, 4).permute(2, 0, 1),
        lambda: torch.randn(64)[16:36].view(4, 5),  # offset of 64 bytes keeps the alignment
        lambda: torch.tensor(3.5),  # 0-dim
        lambda: torch.randn(4, 1, 5).as_strided((4, 1, 5), (5, 99, 1)),  # odd stride, size 1
        lambda: torch.randn(6, 3, requires_grad=True),
    ],
    ids=["contiguous", "transposed", "permuted", "aligned-offset", "0-dim", "size1-stride", "grad"],
)
def test_shareable_tensors_cross_without_a_copy(make):
    t = make()
    a = to_jax(t)
    assert shares(a, t)
    assert a.shape == tuple(t.shape) and a.dtype == jnp.float32
    assert_reads_as(a, t)


def test_empty_tensor_converts():
    a = to_jax(torch.empty(0, 5))
    assert a.shape == (0, 5) and a.dtype == jnp.float32


def test_float64_is_shared_inside_the_scope_and_config_is_untouched():
    t = torch.randn(6, 4, dtype=torch.float64)
    before = jax.config.jax_enable_x64
    with precision_scope(t):
        a = to_jax(t)
        assert a.dtype == jnp.float64 and shares(a, t)
        assert_reads_as(a, t)
    assert jax.config.jax_enable_x64 == before


def test_float64_outside_the_scope_is_refused_not_truncated():
    with pytest.raises(RuntimeError, match="precision_scope"):
        to_jax(torch.randn(3, dtype=torch.float64), name="Z")


def test_precision_scope_enables_x64_only_for_64_bit_tensors():
    before = jax.config.jax_enable_x64
    with precision_scope(torch.randn(2), None):
        assert jax.config.jax_enable_x64 == before
    with precision_scope(torch.randn(2), torch.randn(2, dtype=torch.float64)):
        assert jax.config.jax_enable_x64
    assert jax.config.jax_enable_x64 == before


def test_jax_results_come_back_without_a_copy():
    like = torch.empty((), dtype=torch.float32)
    for shape in ((), (3, 4), (256, 256)):
        a = _double(jnp.arange(math.prod(shape), dtype=jnp.float32).reshape(shape))
        t = to_torch(a, like)
        assert t.data_ptr() == a.unsafe_buffer_pointer()
        assert t.dtype == torch.float32 and t.device == like.device
        np.testing.assert_array_equal(t.numpy(), np.asarray(a))


def test_cpu_arguments_are_numpy_views_with_to_jax_s_checks():
    """What the ops hand to jit: a view of the tensor's own memory, which jit places on the CPU
    without a copy (as ``device_put`` does: same path), with every check of ``to_jax``."""
    for t in (torch.randn(4, 3), torch.randn(1 << 16), torch.randn(64)[16:36].view(4, 5)):
        view = _convert.to_jax_argument(t, name="W['a']")
        assert isinstance(view, np.ndarray) and view.ctypes.data == t.data_ptr()
        assert jax.device_put(view).unsafe_buffer_pointer() == t.data_ptr()  # no copy in JAX
        np.testing.assert_array_equal(np.asarray(_double(view)), 2 * t.numpy())
    with pytest.raises(RuntimeError, match=r"W\['a'\]: torch.float64 .*precision_scope"):
        _convert.to_jax_argument(torch.randn(2).double(), name="W['a']")
    with pytest.raises(TypeError, match="complex"):
        _convert.to_jax_argument(torch.zeros(2, dtype=torch.complex64))
    half = _convert.to_jax_argument(torch.ones(2, 2, dtype=torch.bfloat16))
    assert half.dtype == np.float32  # computed in float32, as through DLPack
    neg = torch.arange(4.0)._neg_view()
    np.testing.assert_array_equal(_convert.to_jax_argument(neg), -np.arange(4.0, dtype=np.float32))
    transposed = torch.randn(5, 8).T  # compact, not row-major: DLPack shares it as it is
    assert shares(_convert.to_jax_argument(transposed), transposed)
    misaligned = torch.randn(100)[1:21]
    view = _convert.to_jax_argument(misaligned)
    # Passed as it is (no torch copy_, which would wake torch's OpenMP workers): a view of the
    # tensor's own memory, which JAX copies once, aligned, when it places the argument.
    assert view.ctypes.data == misaligned.data_ptr()
    placed = jax.device_put(view)
    assert placed.unsafe_buffer_pointer() % 64 == 0
    assert placed.unsafe_buffer_pointer() != misaligned.data_ptr()
    np.testing.assert_array_equal(np.asarray(_double(view)), 2 * misaligned.numpy())


# --- exactly one copy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: torch.randn(4, 10)[:, ::2], "non-compact"),
        (lambda: torch.randn(5).expand(3, 5), "non-compact"),  # broadcast: stride 0
        (lambda: torch.randn(100)[1:21].view(4, 5), "aligned"),  # 4-byte offset
        (lambda: torch.randn(3, 4)._neg_view(), "negative"),  # DLPack would drop the bit
        (lambda: torch.randn(4, 4).to_sparse(), "layout"),
        (lambda: torch.randn(3, 4, dtype=torch.bfloat16).T, "float32"),
        (lambda: torch.randn(3, 4, dtype=torch.float16), "float32"),
    ],
    ids=["stepped", "expanded", "misaligned", "neg-bit", "sparse", "bfloat16", "float16"],
)
def test_unshareable_tensors_get_one_correct_copy(make, reason):
    t = make()
    assert reason in _convert._copy_reason(t.detach())
    copied = shareable(t)
    assert copied.layout == torch.strided and copied.is_contiguous() and not copied.is_neg()
    assert copied.dtype == _convert.compute_dtype(t.dtype)
    assert copied.data_ptr() % 64 == 0
    a = to_jax(t)
    dense = t.to_dense() if t.layout != torch.strided else t
    assert_reads_as(a, dense.resolve_neg())


def test_pinned_memory_is_copied_to_pageable(monkeypatch):
    t = torch.randn(4, 3)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: True)
    assert _convert._copy_reason(t) == "pinned memory"
    copied = shareable(t)
    assert copied.data_ptr() != t.data_ptr()
    torch.testing.assert_close(copied, t)


def test_half_results_return_in_the_input_dtype():
    like = torch.empty((), dtype=torch.bfloat16)
    t = to_torch(jnp.ones((2, 2), jnp.float32), like)
    assert t.dtype == torch.bfloat16


# --- devices ---------------------------------------------------------------------------------


def test_cuda_tensor_without_a_jax_gpu_says_how_to_install(monkeypatch):
    monkeypatch.setattr(_convert, "_jax_has_gpu", lambda: False)
    fake = types.SimpleNamespace(device=torch.device("cuda", 0))
    with pytest.raises(RuntimeError, match=r"jax\[cuda12\]") as info:
        _convert._check_device(fake, "Z")
    assert "Z is on cuda:0" in str(info.value)


def test_unsupported_device_is_refused():
    with pytest.raises(ValueError, match="meta"):
        to_jax(torch.empty(2, 2, device="meta"), name="W['a']")


def test_complex_tensors_are_refused():
    with pytest.raises(TypeError, match="complex"):
        to_jax(torch.randn(3, dtype=torch.complex64), name="Z")


def test_non_tensors_are_refused():
    with pytest.raises(TypeError, match="torch.Tensor"):
        to_jax(np.ones(3), name="Z")


# --- trees -----------------------------------------------------------------------------------


def test_tree_conversion_keeps_dict_order_and_names_leaves():
    tree = {"zeta": torch.randn(2), "alpha": (torch.randn(3), None), "n": 3}
    out = _convert.tree_to_jax(tree, name="Y")
    assert list(out) == ["zeta", "alpha", "n"]
    assert out["n"] == 3 and out["alpha"][1] is None
    assert shares(out["zeta"], tree["zeta"])
    back = _convert.tree_to_torch(out, torch.empty(()))
    assert list(back) == ["zeta", "alpha", "n"]
    torch.testing.assert_close(back["alpha"][0], tree["alpha"][0])
    with pytest.raises(TypeError, match=r"Y\['bad'\]\[0\]"):
        _convert.tree_to_jax({"bad": [torch.zeros(2, dtype=torch.complex64)]}, name="Y")


def test_a_loss_call_shares_every_input_and_output(monkeypatch):
    """Through a whole bridged call: contiguous inputs cross as views of their own memory (jit
    places them without a copy) and the results come back by DLPack without copies."""
    import space_torch_bridge as bridge

    pairs = []
    real_to_jax, real_to_torch = _convert.to_jax_argument, _convert.to_torch

    def spy_to_jax(t, *, name="tensor"):
        a = real_to_jax(t, name=name)
        pairs.append((name, t.data_ptr(), jax.device_put(a).unsafe_buffer_pointer()))
        return a

    def spy_to_torch(a, like):
        t = real_to_torch(a, like)
        pairs.append(("result", a.unsafe_buffer_pointer(), t.data_ptr()))
        return t

    monkeypatch.setattr(_convert, "to_jax_argument", spy_to_jax)
    monkeypatch.setattr(_convert, "to_torch", spy_to_torch)
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(32, 8, generator=g, requires_grad=True)
    Y = {"a": torch.randn(32, 3, generator=g), "b": torch.randn(32, 1, 2, 2, generator=g)}
    W = {"a": torch.eye(8)[:2].contiguous(), "b": torch.eye(8)[2:5].contiguous()}
    A = {"a": torch.randn(2, 3, generator=g), "b": torch.randn(3, 4, generator=g)}
    bridge.combined_loss(Z, W, A, Y, None).backward()
    names = [p[0] for p in pairs]
    assert names[:7] == ["Z", "W['a']", "W['b']", "A['a']", "A['b']", "Y['a']", "Y['b']"]
    assert names.count("result") == 2  # the loss and Z's gradient
    assert all(src == dst for _, src, dst in pairs)
