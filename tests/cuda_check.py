"""CUDA checks of the torch bridge, for a machine with a GPU (not collected by pytest).

Run from the repository root: ``python tests/cuda_check.py``. Needs torch and JAX built for
CUDA. Checks that CUDA tensors cross to JAX without copies, that results and gradients come
back on the input's device with its dtype, and that they equal the CPU results; that the
custom ops keep DLPack's stream semantics (inputs produced on a side stream, results used on
it, with no synchronisation by the caller); that ``torch.library.opcheck`` passes for the loss
op on CUDA tensors; and that a ``torch.compile``-d (``fullgraph=True``) step on CUDA follows
the eager one.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import torch

import space_torch_bridge as bridge
from space_torch_bridge._convert import to_jax


def problem(device, dtype, seed=0, B=512, D=64):
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(B, D, generator=g, dtype=torch.float64)
    Y = {
        "field": Z[:, :16] @ torch.randn(16, 16, generator=g, dtype=torch.float64),
        "energy": (Z[:, 16:20] ** 2).sum(1, keepdim=True),
    }
    move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return move(Z), {q: move(y) for q, y in Y.items()}


def run(dtype) -> list[str]:
    failures = []
    results = {}
    for device in ("cpu", "cuda"):
        Z, Y = problem(device, dtype)
        space = bridge.solve_subspaces(Z, Y, k=4)
        Zg = Z.clone().requires_grad_(True)
        loss = bridge.combined_loss(Zg, space.W, space.A, Y, None, n_dir=16)
        loss.backward()
        for name, t in [("loss", loss), ("Z.grad", Zg.grad), ("W", space.W["field"])]:
            if t.device.type != device or t.dtype != dtype:
                failures.append(f"{dtype} {device}: {name} on {t.device} {t.dtype}")
        results[device] = (loss.item(), Zg.grad.cpu().double().numpy())
    # JAX runs float32 matrix products on GPUs in TF32 by default: ~1e-3 relative on the
    # gradient (measured 9e-4 on an H100; 3e-6 with JAX_DEFAULT_MATMUL_PRECISION=highest).
    tol = 1e-9 if dtype == torch.float64 else 2e-3
    if not np.isclose(results["cpu"][0], results["cuda"][0], rtol=tol):
        failures.append(f"{dtype}: loss cpu {results['cpu'][0]} vs cuda {results['cuda'][0]}")
    g_cpu, g_cuda = results["cpu"][1], results["cuda"][1]
    err = np.abs(g_cpu - g_cuda).max() / np.abs(g_cpu).max()
    if err > tol:
        failures.append(f"{dtype}: gradient cpu vs cuda differ by {err:.2e} (relative)")
    print(
        f"{dtype}: loss cpu {results['cpu'][0]:.8f} cuda {results['cuda'][0]:.8f}, "
        f"grad rel diff {err:.1e}"
    )
    return failures


def streams() -> list[str]:
    """The loss on tensors a side stream is still producing, and its gradient used there.

    The op hands the tensors to JAX with ``__dlpack__(stream=...)`` (torch makes JAX's stream
    wait for the producer, the current stream) and takes the results back the same way, so
    nothing here synchronises, and the results must equal those of a synchronised run.
    """
    Z0, Y = problem("cuda", torch.float32, seed=1, B=4096, D=256)
    space = bridge.solve_subspaces(Z0, Y, k=4)
    big = torch.randn(4096, 4096, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        Z = (big @ big @ Z0) / 4096.0  # long kernels on the side stream
        Z.requires_grad_(True)
        loss = bridge.combined_loss(Z, space.W, space.A, Y, None, n_dir=16)
        loss.backward()
        grad_norm = Z.grad.norm()  # used on the side stream, before any sync
    torch.cuda.synchronize()
    Zs = ((big @ big @ Z0) / 4096.0).detach().requires_grad_(True)
    torch.cuda.synchronize()
    ref = bridge.combined_loss(Zs, space.W, space.A, Y, None, n_dir=16)
    ref.backward()
    torch.cuda.synchronize()
    failures = []
    if not torch.allclose(loss, ref, rtol=1e-5) or not torch.allclose(
        grad_norm, Zs.grad.norm(), rtol=1e-5
    ):
        failures.append(f"side stream: loss {loss.item()} vs {ref.item()}")
    print(f"side stream: loss {loss.item():.6f} synchronised {ref.item():.6f}")
    return failures


def compiled() -> list[str]:
    """opcheck on CUDA, and two compiled (fullgraph) SGD steps against eager ones."""
    from torch import nn

    from space_torch_bridge import _autograd

    failures = []
    Z, Y = problem("cuda", torch.float32, seed=2)
    space = bridge.solve_subspaces(Z, Y, k=4)
    leaves = [Z.clone().requires_grad_(True), *space.W.values(), *space.A.values(), *Y.values()]
    captured = {}
    op = _autograd.op("combined_loss")

    def recording(*args):
        captured["args"] = args
        return op(*args)

    _autograd._OPS[("combined_loss", "loss")] = recording
    try:
        bridge.combined_loss(leaves[0], space.W, space.A, Y, None, n_dir=16)
    finally:
        _autograd._OPS[("combined_loss", "loss")] = op
    result = torch.library.opcheck(op, captured["args"])
    if set(result.values()) != {"SUCCESS"}:
        failures.append(f"opcheck on CUDA: {result}")

    def run(compile_it):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64)).cuda()

        def objective(x):
            return bridge.combined_loss(model(x), space.W, space.A, Y, None, n_dir=16)

        f = torch.compile(objective, fullgraph=True) if compile_it else objective
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        out = []
        for _ in range(2):
            loss = f(Z)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    eager, comp = run(False), run(True)
    print(f"compiled fullgraph on CUDA: {comp}, eager {eager}")
    if not np.allclose(eager, comp, rtol=1e-4):
        failures.append(f"compiled {comp} vs eager {eager}")
    return failures


def main() -> int:
    if not torch.cuda.is_available() or jax.default_backend() != "gpu":
        print("needs torch with CUDA and a CUDA build of JAX")
        return 2
    failures = []
    t = torch.randn(256, 32, device="cuda")
    with jax.enable_x64(False):
        a = to_jax(t)
    shared = a.unsafe_buffer_pointer() == t.data_ptr()
    print(f"zero-copy CUDA float32: {shared}, device {a.devices()}")
    if not shared:
        failures.append("CUDA float32 tensor was copied")
    strided = torch.randn(64, 64, device="cuda")[:, ::2]
    b = to_jax(strided)
    if not np.array_equal(np.asarray(b), strided.cpu().numpy()):
        failures.append("strided CUDA tensor converted wrongly")
    for dtype in (torch.float32, torch.float64):
        failures += run(dtype)
    failures += streams()
    failures += compiled()
    print("\n".join(failures) if failures else "all CUDA checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
