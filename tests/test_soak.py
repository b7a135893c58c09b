"""Soak test: a vmapped SPACE training sweep at the demo's sizes finishes, three times in a row.

With jaxlib 0.10 on CPU this program hung (batched LAPACK calls deadlocking XLA's thread pool)
before ``space_jax.linalg`` made every decomposition batch-safe. It runs in a subprocess with a
hard timeout: a hang is a failure, not a stuck test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600  # a hang never ends; this run takes well under a minute on an idle machine

SCRIPT = textwrap.dedent(
    """
    import dataclasses, importlib.util, json, sys, time
    import jax, numpy as np
    spec = importlib.util.spec_from_file_location("space_demo", sys.argv[1])
    demo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = demo
    spec.loader.exec_module(demo)
    import space_jax as sj

    # The demo's data, model and matrix sizes (fields 32x32 -> 1024 inputs, hidden 256, D = 56,
    # batches of 128, 16 configurations), few steps: 2 periods of (subspace refresh + 1 epoch
    # of 3 batches) per run.
    cfg = dataclasses.replace(demo.Config(), sweep_epochs=2, refresh_every=1)
    data, sizes = demo.make_data(cfg)
    data["x_fit"] = data["x_fit"][:384]
    data["y_fit"] = {q: v[:384] for q, v in data["y_fit"].items()}
    configs = demo.grid_configs(cfg)[:16]
    assert len(configs) == 16, len(configs)
    train_fn = demo.make_sweep_train(cfg, sizes, data)
    x_ref = data["x_fit"][: cfg.n_ref]
    y_ref = {q: v[: cfg.n_ref] for q, v in data["y_fit"].items()}
    args = (data["x_fit"], data["y_fit"], x_ref, y_ref, data["x_val"], data["y_val"])
    batch = {n: jax.numpy.asarray([c[n] for c in configs]) for n in configs[0]}
    program = jax.jit(jax.vmap(train_fn, in_axes=(0,) + (None,) * len(args)))
    runs = []
    for i in range(3):
        t = time.perf_counter()
        out = jax.block_until_ready(program(batch, *args))
        runs.append({k: np.asarray(v).tolist() for k, v in out.items()})
        print(f"run {i}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    print(json.dumps({"latent_dim": sizes["latent_dim"], "runs": runs}))
    """
)


def run_with_hard_timeout(what: str, script: str, *args: str) -> dict:
    """Runs ``script`` in a fresh Python, killed after :data:`TIMEOUT_S`; its last line of
    output, as JSON. A hang fails with ``what`` and the end of its stderr."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script, *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired as err:
        raise AssertionError(
            f"{what} did not finish in {TIMEOUT_S} s (a hang?); stderr: "
            f"{(err.stderr or b'')[-2000:]!r}"
        ) from None
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_vmapped_space_sweep_at_demo_sizes_finishes_three_times():
    demo = str(ROOT / "examples" / "demo.py")
    result = run_with_hard_timeout("the vmapped sweep", SCRIPT, demo)
    assert result["latent_dim"] == 56
    first, *others = result["runs"]
    for metric, values in first.items():
        assert len(values) == 16 and all(abs(v) < 1e6 for v in values), metric
        for other in others:  # the same program on the same data: the same numbers
            assert other[metric] == values, metric
    # The configurations differ, and so do their scores.
    assert len(set(first["val_mean_r2"])) > 1


TORCH_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import torch
    import space_torch_bridge as sl

    # torch.func.vmap through the bridge at a user's size: 16 configurations of bases for a
    # batch of 2048 latents (D = 64, 4 quantities of 16 dims, k = 8), the losses, their
    # gradients and the subspaces refitted per configuration, each one batched JAX call with
    # decompositions inside (the isotropy eigh, the SVDs), three times in a row.
    g = torch.Generator().manual_seed(0)
    B, D, Q, M, K, N = 2048, 64, 4, 16, 8, 16
    Z = torch.randn(B, D, generator=g)
    Y = {f"q{i}": torch.tanh(Z[:, :M] @ torch.randn(M, M, generator=g)) for i in range(Q)}
    with torch.no_grad():
        space = sl.solve_subspaces(Z, Y, k=K)
    scales = torch.linspace(0.5, 2.0, N)
    W = {q: scales[:, None, None] * w for q, w in space.W.items()}
    Zs = Z + 0.01 * torch.randn(N, B, D, generator=g)

    def objective(bases, z):
        return sl.combined_loss(z, bases, space.A, Y, None)

    runs = []
    for i in range(3):
        t = time.perf_counter()
        losses = torch.func.vmap(objective)(W, Zs)
        grads = torch.func.vmap(torch.func.grad(objective))(W, Zs)
        refit = torch.func.vmap(lambda z: sl.solve_subspaces(z, Y, k=K).W["q0"])(Zs)
        runs.append([losses.tolist(), grads["q0"].sum().item(), refit.abs().sum().item()])
        print(f"run {i}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    one = objective({q: w[3] for q, w in W.items()}, Zs[3]).item()
    print(json.dumps({"runs": runs, "item3": one}))
    """
)


def test_torch_func_vmap_through_the_bridge_at_user_sizes_finishes_three_times():
    result = run_with_hard_timeout("torch.func.vmap through the bridge", TORCH_SCRIPT)
    first, *others = result["runs"]
    assert all(other == first for other in others)  # the same program, the same numbers
    losses = first[0]
    assert len(losses) == 16 and len(set(losses)) == 16
    # Item 3 of the batched call is the single call's loss, at float32 rounding.
    assert abs(losses[3] - result["item3"]) <= 1e-5 * abs(result["item3"])
