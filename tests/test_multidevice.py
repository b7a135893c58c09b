"""SPACE on a batch sharded over a 4-device mesh equals one device.

The device count is fixed when JAX starts, so the checks run once in a subprocess
(``tests/multidevice_check.py``) with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``;
the rest of the suite keeps one device. Each test below reads one part of its report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("multidevice_check.py")
# float32, 64 samples: a different reduction order across 4 shards moves results by ~1e-7.
TOL = 1e-5


@pytest.fixture(scope="module")
def report() -> dict:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=4".strip()
    env["JAX_PLATFORMS"] = "cpu"
    root = str(SCRIPT.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_subprocess_sees_four_devices_and_a_sharded_batch(report):
    assert report["devices"] == 4
    assert report["input_sharded"]


def test_solve_subspaces_on_a_sharded_batch_matches_one_device(report):
    assert report["solve_subspaces"] < TOL


def test_moments_of_a_sharded_batch_reduce_across_devices(report):
    assert report["moments"] < TOL
    assert report["moments_all_reduce"]
    assert report["solve_from_moments"] < TOL


def test_combined_loss_gradient_matches_and_stays_sharded(report):
    assert report["loss"] < TOL
    assert report["grad"] < TOL
    assert report["grad_batch_sharded"], report["grad_sharding"]


def test_explicit_mesh_through_auto_axes(report):
    assert report["grad_explicit"] < TOL
    assert report["grad_explicit_type"] == "float32[64@batch,16]"


def test_data_parallel_flax_training_step_matches_one_device(report):
    assert report["train_loss"] < TOL
    assert report["train_params"] < TOL
    assert report["params_replicated"]
    losses = report["train_losses"][1]
    assert losses[-1] < losses[0]
