"""SPACE on 2 processes x 2 CPU devices (loopback, gloo) equals one process on the whole batch.

``tests/multiprocess_check.py`` runs in two processes, each holding only its half of the batch,
on a mesh with Auto axes and on one with Explicit axes; this module runs the same computations
in this process, on one device and the whole batch, and compares. The processes are started by
the launcher of ``examples/multihost.py`` (a free port, one deadline for all, the others killed
as soon as one fails), and the example itself runs as a user would run it. Each run is in its
own session and its whole process group is killed on a timeout, so nothing is left behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import multiprocess_check as mp
import numpy as np
import pytest

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "multihost.py"
TIMEOUT = 240  # seconds, for each multi-process run (about 30 s on an idle 2-core machine)
# float32, 64 samples: another reduction order over 4 shards moves results by ~1e-7; the
# normal equations the decoders use on a mesh square the coordinates' conditioning.
TOL = 1e-5


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("XLA_FLAGS", None)  # the processes set their own device count
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _launcher():
    spec = importlib.util.spec_from_file_location("multihost_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.launch


def _run_in_session(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Runs ``command`` in a new session; on a timeout kills its whole process group."""
    proc = subprocess.Popen(
        command,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{command} did not finish in {timeout} s:\n{out}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, proc.returncode, out)


@pytest.fixture(scope="module")
def distributed(tmp_path_factory) -> tuple[dict, list]:
    out = tmp_path_factory.mktemp("multiprocess")
    # Run the launcher in a child session, so that a hang anywhere is killed as a group.
    script = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('m', {str(EXAMPLE)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"cmd = [sys.executable, {str(Path(__file__).with_name('multiprocess_check.py'))!r}, "
        f"'--out', {str(out)!r}]\n"
        f"res = m.launch(cmd, 2, {TIMEOUT - 10})\n"
        "print(json.dumps(res))\n"
    )
    result = _run_in_session([sys.executable, "-c", script], TIMEOUT)
    assert result.returncode == 0, result.stdout
    statuses = json.loads(result.stdout.strip().splitlines()[-1])
    for i, (status, output) in enumerate(statuses):
        assert status == 0, f"process {i} exited with {status}:\n{output}"
    arrays = dict(np.load(out / "results.npz"))
    seen = [json.loads((out / f"process-{i}.json").read_text()) for i in range(2)]
    return arrays, seen


@pytest.fixture(scope="module")
def reference() -> dict:
    ref = mp.reference()
    flat = {}
    flat |= mp.flat((ref["space"].W, ref["space"].A), "space")
    flat |= mp.flat(ref["moments"], "moments")
    flat |= mp.flat((ref["from_moments"].W, ref["from_moments"].A), "from_moments")
    flat |= mp.flat(ref["nnx_params"], "nnx_params")
    flat |= {"loss": np.asarray(ref["loss"]), "grad": np.asarray(ref["grad"])}
    flat["nnx_loss"] = np.asarray(ref["nnx_loss"])
    return {"arrays": flat, "k_per_q": ref["k_per_q"]}


def _rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def _group(arrays: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def _basis_free(group: dict) -> dict:
    """Projectors ``W.T @ W`` and predictions ``Zc @ W.T @ A`` per quantity."""
    Z = mp.data()[0].astype(np.float64)
    Zc = Z - Z.mean(0)
    out = {}
    for q in mp.K:
        w = group[f"[0]['{q}']"].astype(np.float64)
        a = group[f"[1]['{q}']"].astype(np.float64)
        out[q] = (w.T @ w, Zc @ w.T @ a)
    return out


KINDS = ["auto", "explicit"]


def test_two_processes_of_two_devices_each_hold_half_the_batch(distributed):
    _, seen = distributed
    for s in seen:
        assert s["processes"] == 2 and s["devices"] == 4
        for kind in KINDS:
            assert not s[kind]["fully_addressable"]
            assert s[kind]["local_rows"] == mp.B // 2


@pytest.mark.parametrize("kind", KINDS)
def test_solve_subspaces(distributed, reference, kind):
    arrays, _ = distributed
    got = _basis_free(_group(arrays, f"{kind}/space"))
    want = _basis_free(_group(reference["arrays"], "space"))
    for q in mp.K:
        assert _rel(got[q][0], want[q][0]) < TOL and _rel(got[q][1], want[q][1]) < TOL


@pytest.mark.parametrize("kind", KINDS)
def test_combined_loss_gradient_stays_sharded_and_needs_no_gather(distributed, reference, kind):
    arrays, seen = distributed
    assert _rel(arrays[f"{kind}/loss"], reference["arrays"]["loss"]) < TOL
    assert _rel(arrays[f"{kind}/grad"], reference["arrays"]["grad"]) < TOL
    for s in seen:
        assert s[kind]["grad_sharded_like_Z"]
        assert s[kind]["grad_all_reduce"] and not s[kind]["grad_all_gather"]


@pytest.mark.parametrize("kind", KINDS)
def test_moments_then_solve_from_moments(distributed, reference, kind):
    arrays, _ = distributed
    for key, want in _group(reference["arrays"], "moments").items():
        assert _rel(arrays[f"{kind}/moments{key}"], want) < TOL, key
    got = _basis_free(_group(arrays, f"{kind}/from_moments"))
    want = _basis_free(_group(reference["arrays"], "from_moments"))
    for q in mp.K:
        assert _rel(got[q][0], want[q][0]) < TOL and _rel(got[q][1], want[q][1]) < TOL


@pytest.mark.parametrize("kind", KINDS)
def test_stream_moments_with_each_process_streaming_its_shard(distributed, reference, kind):
    arrays, _ = distributed
    for key, want in _group(reference["arrays"], "moments").items():
        assert _rel(arrays[f"{kind}/stream{key}"], want) < TOL, key


@pytest.mark.parametrize("kind", KINDS)
def test_host_level_sizing_on_global_arrays(distributed, reference, kind):
    _, seen = distributed
    for s in seen:
        assert s[kind]["k_per_q"] == reference["k_per_q"]


@pytest.mark.parametrize("kind", KINDS)
def test_one_data_parallel_nnx_training_step(distributed, reference, kind):
    arrays, seen = distributed
    assert _rel(arrays[f"{kind}/nnx_loss"], reference["arrays"]["nnx_loss"]) < TOL
    params = _group(reference["arrays"], "nnx_params")
    scale = max(np.abs(v).max() for v in params.values())  # the bias barely moves
    for key, want in params.items():
        got = arrays[f"{kind}/nnx_params{key}"]
        assert np.abs(got - want).max() / scale < TOL, key
    assert all(s[kind]["nnx_params_replicated"] for s in seen)


def test_the_readme_recipe_runs_as_documented():
    """``python examples/multihost.py --processes 2``: the example checks itself."""
    result = _run_in_session([sys.executable, str(EXAMPLE), "--processes", "2"], TIMEOUT)
    assert result.returncode == 0, result.stdout
    reports = [
        json.loads(line.split(" ", 1)[1])
        for line in result.stdout.splitlines()
        if line.startswith("REPORT ")
    ]
    assert sorted(r["process"] for r in reports) == [0, 1]
    for r in reports:
        assert r["devices"] == 4 and r["k"] and r["grad_sharded_like_Z"]
        for key in ("solve_subspaces", "grad", "stream_moments", "solve_subspaces_from_moments"):
            assert r[key] < 1e-4, (key, r)


def test_the_launcher_kills_the_others_when_one_fails(tmp_path):
    """A process that dies leaves the other waiting in a collective: it must be killed."""
    script = tmp_path / "fail.py"
    script.write_text(
        "import sys, time\n"
        "i = int(sys.argv[sys.argv.index('--process-id') + 1])\n"
        "sys.exit(3) if i == 1 else time.sleep(600)\n"
    )
    launch = _launcher()
    results = launch([sys.executable, str(script)], 2, timeout=60)
    assert [status for status, _ in results] == [-signal.SIGKILL, 3]


def test_jax_is_single_process_here():
    assert jax.process_count() == 1
