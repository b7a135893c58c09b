"""space_torch_bridge._autograd: torch autograd through one jitted JAX call, on toy functions.

The toy functions have exact torch twins, so gradients can be compared at float64 rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
import torch

from space_torch_bridge import _autograd, _impl


def jax_loss(Z, W, Y):
    """A loss over a latent matrix and dicts of bases and (nested) targets."""
    total = 0.0
    for q, w in W.items():
        total = total + jnp.sum((Z @ w.T) ** 2) * Y[q]["scale"].sum()
    return total / len(W)


def torch_loss(Z, W, Y):
    total = 0.0
    for q, w in W.items():
        total = total + ((Z @ w.T) ** 2).sum() * Y[q]["scale"].sum()
    return total / len(W)


def jax_project(Z, W):
    """A non-scalar function: per-quantity coordinates."""
    return {q: jnp.tanh(Z @ w.T) for q, w in W.items()}


def torch_project(Z, W):
    return {q: torch.tanh(Z @ w.T) for q, w in W.items()}


def inputs(dtype=torch.float64, seed=0, B=7, D=5, grad=("Z", "W.b", "Y.b")):
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(B, D, generator=g, dtype=dtype)
    W = {"b": torch.randn(2, D, generator=g, dtype=dtype), "a": torch.randn(3, D, generator=g)}
    W["a"] = W["a"].to(dtype)
    Y = {q: {"scale": torch.rand(3, generator=g, dtype=dtype)} for q in ("b", "a")}
    if "Z" in grad:
        Z.requires_grad_()
    for q in ("a", "b"):
        if f"W.{q}" in grad:
            W[q].requires_grad_()
        if f"Y.{q}" in grad:
            Y[q]["scale"].requires_grad_()
    return Z, W, Y


def clone(Z, W, Y):
    def c(t):
        return t.detach().clone().requires_grad_(t.requires_grad)

    return (
        c(Z),
        {q: c(w) for q, w in W.items()},
        {q: {"scale": c(y["scale"])} for q, y in Y.items()},
    )


def leaves(Z, W, Y):
    return [Z, *W.values(), *(y["scale"] for y in Y.values())]


def bridged_loss(Z, W, Y):
    return _autograd.call(jax_loss, (Z, W, Y), names=("Z", "W", "Y"), label="toy_loss", loss=True)


def test_loss_gradients_fill_exactly_the_tensors_that_require_grad():
    ours = inputs()
    ref = clone(*ours)
    loss = bridged_loss(*ours)
    expected = torch_loss(*ref)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=0)
    for a, b in zip(leaves(*ours), leaves(*ref), strict=True):
        assert (a.grad is None) == (b.grad is None)
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
            assert a.grad.dtype == a.dtype
    assert ours[1]["a"].grad is None and ours[2]["a"]["scale"].grad is None


def test_incoming_gradient_scales_and_accumulates():
    Z, W, Y = inputs(grad=("Z",))
    (3.0 * bridged_loss(Z, W, Y)).backward(retain_graph=False)
    once = Z.grad.clone()
    Z.grad = None
    loss = bridged_loss(Z, W, Y)
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(Z.grad, 2 * once / 3, rtol=1e-13, atol=0)


def test_backward_twice_without_retain_graph_is_refused_like_torch():
    Z, W, Y = inputs(grad=("Z",))
    loss = bridged_loss(Z, W, Y)
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


def test_no_grad_runs_no_gradient_work():
    Z, W, Y = inputs(seed=3, B=11)
    before = _impl._value_and_grad_fn.cache_info().misses
    with torch.no_grad():
        loss = bridged_loss(Z, W, Y)
    assert loss.grad_fn is None and not loss.requires_grad
    assert _impl._value_and_grad_fn.cache_info().misses == before


def test_compiled_once_per_shape_dtype_and_grad_mask():
    label = "toy_loss_cache"

    def run(Z, W, Y):
        return _autograd.call(jax_loss, (Z, W, Y), names=("Z", "W", "Y"), label=label, loss=True)

    start = _autograd.trace_count(label)
    for seed in range(4):  # new values, same shapes and mask: traced once
        run(*inputs(seed=seed, B=13)).backward()
    assert _autograd.trace_count(label) == start + 1
    run(*inputs(seed=9, B=13, grad=("Z",))).backward()  # another grad mask
    assert _autograd.trace_count(label) == start + 2
    run(*inputs(seed=9, B=17, grad=("Z",))).backward()  # another shape
    assert _autograd.trace_count(label) == start + 3
    run(*inputs(torch.float32, seed=9, B=17, grad=("Z",))).backward()  # another dtype
    assert _autograd.trace_count(label) == start + 4
    for seed in range(3):
        run(*inputs(seed=seed, B=17, grad=("Z",))).backward()
        with torch.no_grad():
            run(*inputs(seed=seed, B=13))
    assert _autograd.trace_count(label) == start + 5  # no_grad: the value-only function


def test_second_order_gradients_raise_a_clear_error():
    Z, W, Y = inputs(grad=("Z",))
    ref = clone(Z, W, Y)
    (g,) = torch.autograd.grad(bridged_loss(Z, W, Y), Z, create_graph=True)
    (expected,) = torch.autograd.grad(torch_loss(*ref), ref[0])
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-12)  # first order still works
    with pytest.raises(RuntimeError, match="second-order gradients"):
        g.sum().backward()


def test_mixed_dtypes_promote_like_torch():
    Z, W, Y = inputs(torch.float32, grad=("Z", "W.b"))
    W["a"] = W["a"].double()
    loss = bridged_loss(Z, W, Y)
    assert loss.dtype == torch.float64
    loss.backward()
    assert Z.grad.dtype == torch.float32 and W["b"].grad.dtype == torch.float32
    assert jax.config.jax_enable_x64 is False


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_computes_in_float32_and_returns_half(dtype):
    Z, W, Y = inputs(dtype, grad=("Z",))
    ref = (
        Z.detach().float().requires_grad_(),
        {q: w.float() for q, w in W.items()},
        {q: {"scale": y["scale"].float()} for q, y in Y.items()},
    )
    loss = bridged_loss(Z, W, Y)
    expected = torch_loss(*ref)
    assert loss.dtype == dtype
    loss.backward()
    expected.backward()
    assert Z.grad.dtype == dtype
    # Half inputs are exact in float32, so both sides compute the same float32 numbers up to
    # float32 rounding; rounding those to half can then differ by at most one half ulp.
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(loss.float(), expected.to(dtype).float(), rtol=ulp, atol=0)
    torch.testing.assert_close(Z.grad.float(), ref[0].grad.to(dtype).float(), rtol=ulp, atol=0)


def test_non_scalar_functions_backpropagate_through_a_vjp():
    Z, W, _ = inputs(grad=("Z", "W.a"))
    rZ, rW, _ = clone(Z, W, {})
    out = _autograd.call(jax_project, (Z, W), names=("Z", "W"), label="toy_project")
    expected = torch_project(rZ, rW)
    assert list(out) == ["b", "a"]  # the input's quantity order
    for q in out:
        torch.testing.assert_close(out[q], expected[q], rtol=1e-13, atol=1e-15)
    # only one output used: torch hands zeros for the other
    (out["a"] ** 2).sum().backward()
    (expected["a"] ** 2).sum().backward()
    torch.testing.assert_close(Z.grad, rZ.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(W["a"].grad, rW["a"].grad, rtol=1e-12, atol=1e-14)
    assert W["b"].grad is None


def test_vjp_second_order_is_refused():
    Z, W, _ = inputs(grad=("Z",))
    out = _autograd.call(jax_project, (Z, W), names=("Z", "W"), label="toy_project")
    (g,) = torch.autograd.grad(out["b"].sum(), Z, create_graph=True)
    with pytest.raises(RuntimeError, match="second-order"):
        g.sum().backward()


def test_x64_is_scoped_to_the_call():
    Z, W, Y = inputs(torch.float64)
    assert jax.config.jax_enable_x64 is False
    loss = bridged_loss(Z, W, Y)
    loss.backward()
    assert loss.dtype == torch.float64 and Z.grad.dtype == torch.float64
    assert jax.config.jax_enable_x64 is False
    assert jnp.ones(2).dtype == jnp.float32


def test_fake_tensors_take_the_op_and_its_shape_only_implementation():
    """Eager calls skip torch's dispatcher, but a dispatch mode (FakeTensorMode, as export and
    shape propagation use) still sees the op and its fake implementation: no JAX call."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    Z, W, Y = inputs(torch.float32, grad=())
    traces = _autograd.trace_count("toy_loss")
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in leaves(Z, W, Y)]
        fZ, fW = fake[0], {"b": fake[1], "a": fake[2]}
        fY = {"b": {"scale": fake[3]}, "a": {"scale": fake[4]}}
        out = bridged_loss(fZ, fW, fY)
    assert isinstance(out, FakeTensor) and out.shape == () and out.dtype == torch.float32
    assert _autograd.trace_count("toy_loss") == traces
    assert not _autograd._eager(fake) and _autograd._eager(leaves(Z, W, Y))


def test_torch_func_grad_equals_backward():
    """``torch.func.grad`` through a bridge loss (torch's generated custom-op autograd refuses
    functorch; the bridge's eager path supports it) gives ``.backward()``'s gradient."""
    Z, W, Y = inputs(grad=())
    expected = Z.clone().requires_grad_()
    bridged_loss(expected, W, Y).backward()
    got = torch.func.grad(lambda z: bridged_loss(z, W, Y))(Z)
    torch.testing.assert_close(got, expected.grad, rtol=0, atol=0)
    again, value = torch.func.grad_and_value(lambda z: bridged_loss(z, W, Y))(Z)
    torch.testing.assert_close(again, expected.grad, rtol=0, atol=0)
    torch.testing.assert_close(value, bridged_loss(Z, W, Y), rtol=0, atol=0)


def test_loss_backward_fills_no_zero_cotangents():
    # The loss op's gradient outputs get no gradient of their own; materialising one zero tensor
    # per input on every backward woke torch's OpenMP pool (its spinning workers then slowed the
    # next XLA call by about a third at the main benchmark size).
    Z, W, Y = inputs(B=64, D=32)
    bridged_loss(Z, W, Y).backward()  # warm
    for t in leaves(Z, W, Y):
        t.grad = None
    with torch.profiler.profile() as prof:
        bridged_loss(Z, W, Y).backward()
    ops = {e.key for e in prof.key_averages()}
    assert not ops & {"aten::zeros", "aten::zeros_like", "aten::zero_"}, sorted(ops)
    assert Z.grad is not None and W["b"].grad is not None
