"""``torch.func.vmap`` over the bridge: one batched JAX call per vmapped call, the same numbers
as a loop of single calls, and gradients through every composition with ``torch.func.grad`` and
plain autograd.

Comparisons are in float64, where the batched and the single programs differ only in the order
of their floating-point reductions (``jax.vmap`` batches the products): 1e-10 relative covers
that with margin (the quantities are O(1), float64's epsilon is 2e-16). One float32 case checks
the default dtype at float32 rounding (1e-5).
"""

from __future__ import annotations

import pytest
import torch

import space_torch_bridge as sl
from space_torch_bridge import _impl

N, B, D, Q, K, M = 3, 48, 6, 2, 2, 3
F64 = {"rtol": 1e-10, "atol": 1e-12}


def problem(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    Zb = torch.randn(N, B, D, generator=g, dtype=dtype)
    Y = {f"q{i}": torch.randn(B, M, generator=g, dtype=dtype) for i in range(Q)}
    with torch.no_grad():
        space = sl.solve_subspaces(Zb[0], Y, k=K)
    return Zb, space.W, space.A, Y


def loss(z, W, A, Y):
    return sl.combined_loss(z, W, A, Y, None, n_dir=4)


def stacked(fn, items):
    outs = [fn(*item) for item in items]
    if isinstance(outs[0], dict):
        return {q: torch.stack([o[q] for o in outs]) for q in outs[0]}
    return torch.stack(outs)


def test_vmap_of_a_loss_is_one_batched_call_equal_to_the_loop(monkeypatch):
    Zb, W, A, Y = problem()
    loop = stacked(lambda z: loss(z, W, A, Y), [(z,) for z in Zb])
    calls = []
    batched = _impl._batched

    def counted(fn, axes, *args):
        def run(*a):
            calls.append(axes)
            return batched(fn, axes, *args)(*a)

        return run

    monkeypatch.setattr(_impl, "_batched", counted)
    got = torch.func.vmap(lambda z: loss(z, W, A, Y))(Zb)
    # One jax.vmap call for all N items: Z batched, the bases, decoders and targets shared.
    assert calls == [(0,) + (None,) * (3 * Q)]
    assert got.shape == (N,) and got.dtype == torch.float64
    torch.testing.assert_close(got, loop, **F64)
    # Another batch dimension, and chunks of the batch, give the same.
    moved = torch.func.vmap(lambda z: loss(z, W, A, Y), in_dims=1)(Zb.transpose(0, 1))
    torch.testing.assert_close(moved, loop, **F64)
    chunked = torch.func.vmap(lambda z: loss(z, W, A, Y), chunk_size=2)(Zb)
    torch.testing.assert_close(chunked, loop, **F64)


def test_vmap_of_grad_gives_per_item_gradients_of_batched_and_shared_inputs():
    Zb, W, A, Y = problem()
    # Per-example gradients with respect to the batched Z.
    grad_z = torch.func.grad(lambda z: loss(z, W, A, Y))
    expected = stacked(grad_z, [(z,) for z in Zb])
    torch.testing.assert_close(torch.func.vmap(grad_z)(Zb), expected, **F64)
    # A sweep over bases: W batched, Z shared; gradients with respect to W, per configuration.
    Wb = {q: torch.stack([w * (1.0 + 0.1 * i) for i in range(N)]) for q, w in W.items()}
    grad_w = torch.func.grad(lambda w, z: loss(z, w, A, Y))
    items = [({q: w[i] for q, w in Wb.items()}, Zb[0]) for i in range(N)]
    got = torch.func.vmap(grad_w, in_dims=(0, None))(Wb, Zb[0])
    want = stacked(grad_w, items)
    for q in W:
        torch.testing.assert_close(got[q], want[q], **F64)


def test_gradients_through_a_vmap_sum_per_item_and_shared_inputs():
    Zb, W, A, Y = problem()
    per_item = stacked(torch.func.grad(lambda z: loss(z, W, A, Y)), [(z,) for z in Zb])

    def total(zb, a):
        return torch.func.vmap(lambda z: loss(z, W, a, Y))(zb).sum()

    # torch.func.grad outside the vmap: the batched input's gradient is per item, the shared
    # decoders' the sum over the batch.
    g_z, g_a = torch.func.grad(total, argnums=(0, 1))(Zb, A)
    torch.testing.assert_close(g_z, per_item, **F64)
    grad_a = torch.func.grad(lambda a, z: loss(z, W, a, Y))
    summed = {q: sum(grad_a(A, z)[q] for z in Zb) for q in A}
    for q in A:
        torch.testing.assert_close(g_a[q], summed[q], **F64)
    # Plain autograd outside the vmap gives the same.
    Zr = Zb.clone().requires_grad_()
    Ar = {q: a.clone().requires_grad_() for q, a in A.items()}
    total(Zr, Ar).backward()
    torch.testing.assert_close(Zr.grad, per_item, **F64)
    for q in A:
        torch.testing.assert_close(Ar[q].grad, summed[q], **F64)


def test_vmap_of_functions_and_their_gradients():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 5, 1, 8, 8, generator=g, dtype=torch.float64)

    def pooled(t):
        return sl.data.pool(t, 2, "avg")

    def energy(t):
        return pooled(t).square().sum()

    torch.testing.assert_close(torch.func.vmap(pooled)(x), stacked(pooled, [(t,) for t in x]))
    per_item = stacked(torch.func.grad(energy), [(t,) for t in x])
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(energy))(x), per_item, **F64)
    through = torch.func.grad(lambda t: torch.func.vmap(energy)(t).sum())(x)
    torch.testing.assert_close(through, per_item, **F64)

    # A function of a batched and a shared input: the shared one's gradient sums the items.
    W_old = torch.linalg.qr(torch.randn(D, 2, generator=g, dtype=torch.float64))[0].T
    W_new = W_old + 0.1 * torch.randn(N, 2, D, generator=g, dtype=torch.float64)

    def change(old, new):
        return sl.optim.subspace_change(old, new)["mean_cos_sim"]

    w = W_old.clone().requires_grad_()
    torch.func.vmap(change, in_dims=(None, 0))(w, W_new).sum().backward()
    summed = sum(torch.func.grad(change)(W_old, new) for new in W_new)
    torch.testing.assert_close(w.grad, summed, **F64)


def test_vmap_float32_matches_the_loop_at_float32_rounding():
    Zb, W, A, Y = problem(torch.float32)
    got = torch.func.vmap(lambda z: loss(z, W, A, Y))(Zb)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, stacked(lambda z: loss(z, W, A, Y), [(z,) for z in Zb]),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_vmap_refuses_nested_vmap_and_bad_items_clearly():
    Zb, W, A, Y = problem()
    with pytest.raises(NotImplementedError, match="nested torch.func.vmap"):
        torch.func.vmap(torch.func.vmap(lambda z: loss(z, W, A, Y)))(Zb[None])
    bad = Zb.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="combined_loss: Z contains NaN"):
        torch.func.vmap(lambda z: loss(z, W, A, Y))(bad)
    with pytest.raises(RuntimeError, match="second-order"):
        z = Zb.clone().requires_grad_()
        total = torch.func.vmap(lambda t: loss(t, W, A, Y))(z).sum()
        (g,) = torch.autograd.grad(total, z, create_graph=True)
        g.sum().backward()
