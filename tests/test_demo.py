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
    # Model selection: the grid (plus the baseline) vmapped, scored on validation only.
    assert metrics["sweep"]["vectorized"] is True
    grid = metrics["grid"]
    n = metrics["sweep"]["n_configs"]
    assert n == len(grid["alignment"]) == len(grid["val_mean_r2"]) >= 5
    for q in quantities:
        assert len(grid[f"val_r2_{q}"]) == n
    selection = metrics["selection"]
    chosen = {name: grid[name][selection["index"]] for name in selection["config"]}
    assert chosen == selection["config"] == metrics["space"]["hyperparameters"]
    assert selection["validation"]["val_mean_r2"] == max(grid["val_mean_r2"][:-1]) or (
        "match or beat" in selection["rule"]
    )
    assert all(v == 0.0 for k, v in metrics["baseline"]["hyperparameters"].items() if k != "lr")
    for name in ("loss_curves", "decode_r2", "subspace_drift", "sweep"):
        path = tmp_path / f"{name}.png"
        assert path.stat().st_size > 5_000, name


def test_metrics_are_written_before_the_plots(demo, tmp_path, monkeypatch):
    """A failing plot loses no numbers (run with the heavy steps replaced by stand-ins)."""
    import space_jax as sj

    cfg = demo.Config.quick()
    configs = demo.grid_configs(cfg)
    columns = {n: np.asarray([c[n] for c in configs]) for n in configs[0]}
    scores = np.linspace(0.1, 0.5, len(configs))
    for q in demo.QUANTITIES:
        columns[f"val_r2_{q}"] = scores
    columns["val_mean_r2"] = scores
    metric_names = [m for m in columns if m.startswith("val_")]
    fake = sj.SweepResult(columns, list(configs[0]), metric_names, 1.0)
    evaluation = {
        "decode_r2": dict.fromkeys(demo.QUANTITIES, 0.5),
        "mean_decode_r2": 0.5,
        **dict.fromkeys(("alignment", "disentanglement", "isotropy"), 0.1),
        "reconstruction_mse": 0.1,
        "reconstruction_r2": 0.9,
    }
    history = {"drift": [], "span_drift": []}
    sizes = {"n_bins": 2, "k": dict.fromkeys(demo.QUANTITIES, 1), "latent_dim": 8}
    monkeypatch.setattr(demo, "make_data", lambda cfg: ({}, sizes))
    monkeypatch.setattr(demo, "model_selection", lambda *a: fake)
    monkeypatch.setattr(demo, "train", lambda *a, **k: {"model": None, "history": history})
    monkeypatch.setattr(demo, "evaluate", lambda *a: dict(evaluation))

    def broken(*args):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(demo, "plot_all", broken)
    with pytest.raises(RuntimeError, match="plotting failed"):
        demo.run(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # The rule: every row beats the last (the baseline) only if its scores are higher; here
    # the last row has the highest scores, so none does and the best mean of the grid wins.
    assert metrics["selection"]["index"] == len(configs) - 2
    assert "no configuration matched" in metrics["selection"]["rule"]
    assert metrics["space"]["hyperparameters"] == configs[-2]


def test_missing_optional_dependency_stops_with_a_message(demo, monkeypatch):
    real = demo.importlib.util.find_spec
    monkeypatch.setattr(
        demo.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    with pytest.raises(SystemExit, match=r"needs matplotlib \(the plots\).*--no-plots"):
        demo.require_optional(plots=True)
    demo.require_optional(plots=False)  # metrics only: matplotlib not needed


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
