"""CUDA checks of the torch bridge, for a machine with a GPU (not collected by pytest).

Run from the repository root: ``python tests/cuda_check.py``. Needs torch and JAX built for
CUDA. Checks that CUDA tensors cross to JAX without copies, that results and gradients come
back on the input's device with its dtype, and that they equal the CPU results.
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
    print("\n".join(failures) if failures else "all CUDA checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
