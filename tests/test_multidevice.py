"""SPACE on a batch sharded over a 4-device mesh, with Auto and with Explicit axes, equals one
device, with no wrapper (``auto_axes``, ``set_mesh``) around the library's calls.

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
# float32, 64 samples: a different reduction order across 4 shards moves results by ~1e-7, and
# the decoders' normal equations on a mesh square the coordinates' condition number.
TOL = 1e-5
KINDS = ["auto", "explicit"]


@pytest.fixture(scope="module")
def report() -> dict:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=4".strip()
    env["JAX_PLATFORMS"] = "cpu"
    root = str(SCRIPT.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_subprocess_sees_four_devices_and_a_sharded_batch(report):
    assert report["devices"] == 4
    for kind in KINDS:
        assert report[kind]["input_sharded"]


@pytest.mark.parametrize("kind", KINDS)
def test_solve_subspaces_fit_decoders_and_subspaces(report, kind):
    r = report[kind]
    assert r["solve_subspaces"] < TOL
    if kind == "explicit":
        assert r["fit_decoders"] < TOL
        assert r["subspaces"] < TOL
    # Batch statistics are all-reduced; the batch is never gathered.
    assert r["solve_subspaces_collectives"] == {"all_reduce": True, "all_gather": False}


@pytest.mark.parametrize("kind", KINDS)
def test_moments_of_a_sharded_batch_reduce_across_devices(report, kind):
    r = report[kind]
    assert r["moments"] < TOL and r["moments_eager"] < TOL
    assert r["moments_collectives"] == {"all_reduce": True, "all_gather": False}
    assert r["solve_from_moments"] < TOL


@pytest.mark.parametrize("kind", KINDS)
def test_a_wide_gram_of_a_sharded_batch_reduces_across_devices(report, kind):
    r = report[kind]
    assert r["batch_gram"] < TOL and r.get("batch_gram_eager", 0.0) < TOL
    assert r["batch_gram_collectives"] == {"all_reduce": True, "all_gather": False}


@pytest.mark.parametrize("kind", KINDS)
def test_stream_moments_of_sharded_batches(report, kind):
    r = report[kind]
    assert r.get("stream_moments", 0.0) < TOL  # global batches (Explicit only)
    assert r["stream_moments_sharding"] < TOL
    # A batch the mesh does not divide is refused with an error that says so.
    error = r["stream_moments_indivisible_error"]
    assert "batches[0]" in error and "62 samples" in error and "split evenly" in error


@pytest.mark.parametrize("kind", KINDS)
def test_combined_loss_gradient_matches_and_stays_sharded(report, kind):
    r = report[kind]
    assert r["loss"] < TOL
    assert r["grad"] < TOL
    assert r["grad_batch_sharded"], r["grad_type"]
    assert r["grad_collectives"] == {"all_reduce": True, "all_gather": False}
    if kind == "explicit":
        assert r["grad_type"] == "float32[64@batch,16]"


def test_eager_losses_and_each_term_on_an_explicit_mesh(report):
    r = report["explicit"]
    assert r["loss_eager"] < TOL
    assert r["grad_eager"] < TOL and r["grad_eager_batch_sharded"]
    for name in ("alignment", "disentanglement", "isotropy"):
        assert r[f"{name}_loss_and_grad"] < TOL, name


def test_pooling_and_host_level_sizing(report):
    r = report["explicit"]
    assert r["pool"] < TOL and r["pool_batch_sharded"]
    assert r["k_per_q"] and r["optimal_bins"] and r["solve_dims"]


def test_data_parallel_flax_training_step_matches_one_device(report):
    r = report["explicit"]
    assert r["train_loss"] < TOL
    assert r["train_params"] < TOL
    assert r["params_replicated"]
    losses = r["train_losses"][1]
    assert losses[-1] < losses[0]


def test_nnx_regularizer_refresh_and_loss_on_an_explicit_mesh(report):
    r = report["explicit"]
    assert r["nnx_loss"] < TOL
    assert r["nnx_grads"] < TOL
    assert r["nnx_refresh"] < TOL


def test_shared_space_training_on_an_explicit_mesh(report):
    r = report["explicit"]
    assert r["shared_minibatch"] < TOL
    # From the GCCA start (defined up to rotations among near-equal canonical correlations),
    # float32 rounding moves the trajectory: reordering the rows on one device moves the loss
    # history by ~1e-3 too.
    assert r["shared_default_history"] < 2e-2
