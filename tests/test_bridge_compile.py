"""The bridge under torch.compile: every op passes torch.library.opcheck, and a training step
that calls every loss compiles (default and fullgraph=True) and follows the eager trajectory.

Compiling is slow on two cores, so there is one small model and one compiled step per mode.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import space_torch_bridge as bridge
from space_torch_bridge import _autograd, data, loss, optim, settings, util

B, D = 24, 6


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 10, generator=g)
    Y = {"field": torch.tanh(x[:, :4]).reshape(B, 1, 2, 2), "energy": x[:, 4:7] ** 2}
    return x, Y


class Recorder:
    """Wraps the bridge's ops to keep the arguments of their first call each (every call goes
    through its op, as under torch.compile: no eager shortcut)."""

    def __init__(self, monkeypatch):
        self.calls = {}
        monkeypatch.setattr(_autograd, "_eager", lambda leaves: False)
        for key, op in dict(_autograd._OPS).items():
            monkeypatch.setitem(_autograd._OPS, key, self._wrap(key, op))

    def _wrap(self, key, op):
        def recorded(*args):
            self.calls.setdefault(key, (op, args))
            return op(*args)

        return recorded


def exercise_every_op():
    """Calls every bridge function that runs JAX, forward and backward."""
    x, Y = problem()
    Z = x[:, :D].clone().requires_grad_(True)
    with torch.no_grad():
        space = bridge.solve_subspaces(Z, Y, k=2)
    W = {q: w.clone().requires_grad_(True) for q, w in space.W.items()}
    W_prev = {q: w.detach() + 0.01 for q, w in W.items()}
    total = (
        loss.alignment_loss(Z, W, space.A, Y)
        + loss.disentanglement_loss(Z, W)
        + loss.isotropy_loss(Z, W, n_dir=3)
        + loss.stability_loss(W, W_prev)
        + bridge.combined_loss(Z, W, space.A, Y, W_prev, n_dir=3)
    )
    s = bridge.solve_subspaces(Z, Y, k=2)
    total = total + sum(w.sum() for w in s.W.values())
    total = total + sum(w.sum() for w in bridge.subspaces(Z, Y, {"field": 1, "energy": 2}).values())
    total = total + data.pool(Y["field"].clone().requires_grad_(True), 1, "max").sum()
    U, S = util.left(Z)
    Vh, S2 = util.right(Z)
    U3, S3, Vh3 = util.full(Z)
    total = total + U.sum() + S.sum() + Vh.sum() + S2.sum() + U3.sum() + S3.sum() + Vh3.sum()
    total = total + util.singular_values(Z).sum()
    change = optim.subspace_change(W["field"], W["energy"])
    total = total + change["mean_cos_sim"] + change["per_dir_cos"].sum()
    total.backward()
    directions = bridge.principal_directions(Z, Y)
    decoders = optim.fit_decoders(space.W, Z, Y)
    return total.detach(), Z.grad, {q: w.grad for q, w in W.items()}, directions, decoders


def _detached(arg):
    if isinstance(arg, list):
        return [_detached(a) for a in arg]
    return arg.detach() if isinstance(arg, torch.Tensor) else arg


def test_every_op_passes_opcheck(monkeypatch):
    recorder = Recorder(monkeypatch)
    exercise_every_op()
    saved = settings.config.solver_mode
    settings.config.solver_mode = "lowrank"  # the op with a seed input
    try:
        util.singular_values(problem()[0])
    finally:
        settings.config.solver_mode = saved
    registered = set(_autograd._OPS)
    public = {k for k in registered if not k[0].startswith("toy")}
    assert public <= set(recorder.calls), f"not exercised: {public - set(recorder.calls)}"
    for key in sorted(public):
        op, args = recorder.calls[key]
        if key[1] == "vjp":  # a backward: its own derivative is refused (first order only)
            args = tuple(_detached(a) for a in args)
        result = torch.library.opcheck(op, args)
        assert set(result.values()) == {"SUCCESS"}, (key, result)


def test_eager_calls_skip_the_ops_and_equal_them(monkeypatch):
    """Eager calls run the ops' implementations without torch's dispatcher: same values and
    gradients, bit for bit, as through the ops."""
    eager = exercise_every_op()
    recorder = Recorder(monkeypatch)
    through_ops = exercise_every_op()
    assert len(recorder.calls) > 20  # the second run did go through the ops
    flat_eager = torch.utils._pytree.tree_leaves(eager)
    flat_ops = torch.utils._pytree.tree_leaves(through_ops)
    assert len(flat_eager) == len(flat_ops) == 10  # loss, 3 gradients, 4 directions, 2 decoders
    for a, b in zip(flat_eager, flat_ops, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, D))


def train(compile_mode, steps=3):
    """A few SGD steps on reconstruction-free SPACE: every loss in the objective."""
    x, Y = problem()
    model = make_model()
    with torch.no_grad():
        space = bridge.solve_subspaces(model(x), Y, k=2)
    W, A = space.W, space.A
    W_prev = {q: w + 0.01 for q, w in W.items()}

    def objective(x):
        z = model(x)
        return (
            bridge.combined_loss(z, W, A, Y, W_prev, n_dir=3)
            + loss.alignment_loss(z, W, A, Y)
            + loss.disentanglement_loss(z, W)
            + loss.isotropy_loss(z, W, n_dir=3)
            + loss.stability_loss(W, W_prev)
            + 0.01 * z.pow(2).mean()
        )

    if compile_mode is not None:
        objective = torch.compile(objective, fullgraph=compile_mode == "fullgraph")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(steps):
        value = objective(x)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    return losses, [p.detach().clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def eager():
    return train(None)


@pytest.mark.parametrize("mode", ["default", "fullgraph"])
def test_compiled_training_step_follows_the_eager_trajectory(eager, mode):
    torch._dynamo.reset()
    losses, params = train(mode)
    # Inductor fuses the model's float32 arithmetic differently from eager; the bridge's ops
    # compute the same numbers in both, so the trajectories agree to float32 rounding.
    torch.testing.assert_close(losses, eager[0], rtol=1e-5, atol=1e-6)
    for p, q in zip(params, eager[1], strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert losses[-1] < losses[0]


def test_fullgraph_sees_one_graph_without_breaks():
    x, Y = problem()
    Z = x[:, :D]
    with torch.no_grad():
        space = bridge.solve_subspaces(Z, Y, k=2)

    def f(Z):
        W = bridge.subspaces(Z, Y, 2)
        pooled = data.pool(Y["field"], 1)
        return bridge.combined_loss(Z, W, space.A, Y, None, n_dir=3) + pooled.sum()

    explanation = torch._dynamo.explain(f)(Z)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    ops = {str(n.target) for g in explanation.graphs for n in g.graph.nodes}
    assert {"space_torch_bridge.combined_loss.default", "space_torch_bridge.pool.default"} <= ops


def test_compiled_gradient_of_one_output_skips_the_unused_ones():
    """Under torch.compile too, only the outputs that receive a gradient are differentiated:
    ``mean_cos_sim``'s gradient stays finite where the unused angle output's derivative is
    infinite (a direction that did not move), and equals the eager one."""
    g = torch.Generator().manual_seed(3)
    W_old = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))[0].T
    W_new = W_old.clone()
    W_new[1] = W_new[1] + 0.3 * torch.randn(6, generator=g, dtype=torch.float64)

    def similarity(w):
        return optim.subspace_change(w, W_new)["mean_cos_sim"]

    grads = []
    for fn in (similarity, torch.compile(similarity, fullgraph=True)):
        w = W_old.clone().requires_grad_()
        fn(w).backward()
        grads.append(w.grad)
    assert torch.isfinite(grads[1]).all()
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
