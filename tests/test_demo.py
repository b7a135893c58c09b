"""Smoke test of the demo (examples/demo.py) at tiny sizes, and of its data."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo.py"


def load_demo():
    spec = importlib.util.spec_from_file_location("space_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo():
    return load_demo()


def test_quick_demo_writes_metrics_and_plots(tmp_path):
    # A subprocess: the demo configures XLA before importing JAX, as `make demo` runs it.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(DEMO), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| decode R² field |" in proc.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    quantities = metrics["config"]["quantities"]
    assert quantities == ["field", "grad_mag", "laplacian", "energy"]
    for label in ("space", "baseline"):
        m = metrics[label]
        assert set(m["decode_r2"]) == set(quantities)
        for key in ("disentanglement", "isotropy", "alignment", "mean_decode_r2"):
            assert math.isfinite(m[key]), (label, key)
        assert all(math.isfinite(v) and v <= 1.0 for v in m["decode_r2"].values())
    assert set(metrics["config"]["k"]) == set(quantities)
    assert metrics["config"]["latent_dim"] >= sum(metrics["config"]["k"].values())
    assert len(metrics["sweep"]["space_weight"]) == len(metrics["sweep"]["mean_decode_r2"])
    for name in ("loss_curves", "decode_r2", "subspace_drift", "sweep"):
        path = tmp_path / f"{name}.png"
        assert path.stat().st_size > 5_000, name


def test_data_is_seeded_and_sized(demo):
    cfg = demo.Config.quick()
    a = demo.heat_fields(8, 16, np.random.default_rng(3))
    b = demo.heat_fields(8, 16, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (8, 1, 16, 16) and a.dtype == np.float32
    data, sizes = demo.make_data(cfg)
    assert data["x_train"].shape == (cfg.n_train, 1, cfg.grid, cfg.grid)
    n = sizes["n_bins"]
    for q in demo.QUANTITIES:
        assert data["y_train"][q].shape == (cfg.n_train, 1, n, n)
        # Each pooled quantity has unit (scalar) standard deviation on the training split.
        y = np.asarray(data["y_train"][q])
        np.testing.assert_allclose((y - y.mean(axis=0)).std(), 1.0, rtol=1e-4)
    assert sizes["latent_dim"] >= sum(sizes["k"].values())


def test_quantities_are_the_physics(demo):
    grid = 32
    x = np.arange(grid) / grid
    u = np.sin(2 * np.pi * x)[:, None] * np.ones(grid)[None, :]
    u = jnp.asarray(u[None, None], jnp.float32)
    lap = np.asarray(demo.laplacian(u))[0, 0]
    expected = -((2 * np.pi) ** 2) * np.asarray(u)[0, 0]
    np.testing.assert_allclose(lap, expected, atol=0.01 * (2 * np.pi) ** 2)
    grad = np.asarray(demo.grad_mag(u))[0, 0]
    expected = np.abs(2 * np.pi * np.cos(2 * np.pi * x))[:, None] * np.ones((1, grid))
    np.testing.assert_allclose(grad, expected, atol=0.1)  # central differences: O(h^2)
    np.testing.assert_allclose(np.asarray(demo.energy(u)), 0.5 * np.asarray(u) ** 2)
