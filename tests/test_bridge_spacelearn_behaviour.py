"""Where user code depends on spacelearn 0.1.0's behaviour: its exception types, the key
phrases of its messages, and the moment it raises; and checks that do not depend on what
was called before (fresh-process subprocess)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import spacelearn
import spacelearn.data
import torch

import space_torch_bridge as bridge
from space_torch_bridge import data, loss


def both(name):
    """The same function from spacelearn and from the bridge (``module.attr``)."""
    module, attr = name.rsplit(".", 1) if "." in name else ("", name)
    sl = getattr(getattr(spacelearn, module) if module else spacelearn, attr)
    br = getattr(getattr(bridge, module) if module else bridge, attr)
    return sl, br


@pytest.mark.parametrize(
    "args, phrase",
    [
        ((torch.randn(4, 3, 8), 2), "Invalid number of dimensions: 3"),
        ((torch.randn(4, 8), 2, "mean"), "Invalid mode: mean"),
        ((torch.randn(4, 1, 6, 6), 2, "sum"), "Invalid mode: sum"),
        ((torch.randn(4, 2, 2, 3, 3), 2, "bogus"), "Invalid number of dimensions: 5"),
    ],
)
def test_pool_raises_spacelearns_error_type_and_phrase_first(args, phrase):
    sl, br = both("data.pool")
    with pytest.raises(ValueError, match=phrase) as expected:
        sl(*args)
    with pytest.raises(ValueError) as ours:
        br(*args)
    assert str(ours.value).startswith(str(expected.value).split(".")[0])
    assert "pool: " in str(ours.value)  # then our detail


def test_compute_Q_type_mismatch_keeps_spacelearns_phrase():
    def a(x: int, y):
        return x

    def b(x: float):
        return x

    from spacelearn.data._compute_Q import compute_Q as sl_compute_Q

    with pytest.raises(TypeError, match=r"^Type mismatch for argument 'x': Expected int, but b"):
        sl_compute_Q(a, b)
    with pytest.raises(TypeError, match=r"^Type mismatch for argument 'x': Expected int, but b"):
        data.compute_Q(a, b)
    with pytest.raises(TypeError, match=r"compute_Q: 'a' annotates 'x'"):
        data.compute_Q(a, b)


def test_compute_Q_agrees_with_spacelearn_on_calls():
    from spacelearn.data._compute_Q import compute_Q as sl_compute_Q

    def double(u: torch.Tensor):
        return 2 * u

    def shifted(u: torch.Tensor, s):
        return u + s

    u = torch.arange(4.0)
    ours = data.compute_Q(double, plus=shifted)(u=u, s=1.0, unused=3)
    theirs = sl_compute_Q(double, plus=shifted)(u=u, s=1.0, unused=3)
    assert list(ours) == list(theirs) == ["double", "plus"]
    for q in ours:
        torch.testing.assert_close(ours[q], theirs[q])


def test_input_to_quantity_raises_when_called_not_when_built():
    def field(u):
        return u

    sl, br = both("data.input_to_quantity")
    u = torch.randn(4, 1, 6, 6)
    for build in (sl, br):
        registry = build(5, "bogus", field)  # no error yet, as in spacelearn
        with pytest.raises(ValueError, match="^Invalid mode: bogus"):
            registry(u=u)
    registry = br(3, "avg", field)
    with pytest.raises(ValueError, match=r"^Invalid number of dimensions: 3.*quantity 'field'"):
        registry(u=torch.randn(4, 6, 6))
    torch.testing.assert_close(registry(u=u)["field"], sl(3, "avg", field)(u=u)["field"])


def test_space_key_mismatch_keeps_spacelearns_phrase():
    w = torch.eye(2)
    with pytest.raises(ValueError, match="^W, A, and V must contain identical keys"):
        bridge.Space({"a": w}, {"b": w}, {"a": w})


def test_combined_loss_keeps_spacelearns_signature():
    import inspect

    sl, br = both("combined_loss")
    assert inspect.signature(sl).parameters.keys() == inspect.signature(br).parameters.keys()
    for name in ("W_prev", "n_dir"):
        ours, theirs = (
            inspect.signature(br).parameters[name],
            inspect.signature(sl).parameters[name],
        )
        assert (ours.kind, ours.default) == (theirs.kind, theirs.default)


@pytest.mark.parametrize("bad", [True, 1.0, 2.0, "3", None])
def test_static_arguments_are_refused_by_type(bad):
    g = torch.Generator().manual_seed(0)
    Z, Y = torch.randn(16, 6, generator=g), {"a": torch.randn(16, 3, generator=g)}
    W = bridge.subspaces(Z, Y, 2)
    with pytest.raises(TypeError, match="k: expected an int"):
        bridge.solve_subspaces(Z, Y, k=bad)
    with pytest.raises(TypeError, match="n_dir: expected an int"):
        loss.isotropy_loss(Z, W, n_dir=bad)
    with pytest.raises(TypeError, match="n_bins: expected an int"):
        data.pool(Z, bad)


FRESH_PROCESS = textwrap.dedent(
    """
    import torch
    import space_torch_bridge as bridge
    from space_torch_bridge import data, loss

    g = torch.Generator().manual_seed(0)
    Z, Y = torch.randn(16, 6, generator=g), {"a": torch.randn(16, 3, generator=g)}

    def refused(f, *args, **kwargs):
        try:
            f(*args, **kwargs)
        except TypeError:
            return True
        return False

    order = __ORDER__
    results = {}
    for first in order:
        # a valid call first, so that a cache keyed by equality would hold an entry ...
        W = bridge.subspaces(Z, Y, 1)
        bridge.solve_subspaces(Z, Y, k=1)
        loss.isotropy_loss(Z, W, n_dir=3)
        data.pool(Z, 2)
        # ... then values equal to it with other types
        results[first] = [
            refused(bridge.solve_subspaces, Z, Y, k=True),
            refused(bridge.solve_subspaces, Z, Y, k=1.0),
            refused(bridge.subspaces, Z, Y, {"a": True}),
            refused(loss.isotropy_loss, Z, W, n_dir=3.0),
            refused(bridge.combined_loss, Z, W, {"a": torch.zeros(1, 3)}, Y, None, n_dir=True),
            refused(data.pool, Z, 2.0),
        ]
    print("RESULT", all(all(r) for r in results.values()))
    """
)


def test_validation_does_not_depend_on_earlier_calls_in_a_fresh_process():
    code = FRESH_PROCESS.replace("__ORDER__", "['first', 'again']")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RESULT True" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_dataloader_workers_that_call_the_bridge_work_with_spawn():
    proc = subprocess.run(
        [sys.executable, "examples/torch_dataloader.py"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "final SPACE loss" in proc.stdout


FORKED = textwrap.dedent(
    """
    import os, torch
    from space_torch_bridge import data

    data.pool(torch.randn(2, 4), 2)  # JAX runs in the parent
    pid = os.fork()
    if pid == 0:
        try:
            data.pool(torch.randn(2, 4), 2)
        except RuntimeError as e:
            os._exit(3 if "multiprocessing_context='spawn'" in str(e) else 4)
        os._exit(5)
    _, status = os.waitpid(pid, 0)
    print("CHILD", os.waitstatus_to_exitcode(status))
    """
)


def test_a_child_forked_after_jax_started_refuses_instead_of_hanging():
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", FORKED],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "CHILD 3" in proc.stdout, proc.stdout + proc.stderr[-2000:]
