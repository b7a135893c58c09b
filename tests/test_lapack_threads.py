"""LAPACK behind jaxlib's CPU decompositions runs on one thread (its workers would spin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from space_jax import linalg
from space_jax._lapack_threads import ensure_lapack_threads

# Runs in a fresh process: the first decomposition sets the limit, and only SciPy's BLAS.
_PROBE = r"""
import json, threadpoolctl
import scipy.linalg.cython_lapack
before = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}
import jax.numpy as jnp
from space_jax import linalg
linalg.eigh(jnp.eye(4) + 1.0)[0].block_until_ready()
after = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}
print(json.dumps({"before": before, "after": after}))
"""


def _probe(env_value: str | None) -> tuple[dict, dict]:
    env = dict(os.environ)
    env.pop("SPACE_JAX_LAPACK_THREADS", None)
    env.pop("OPENBLAS_NUM_THREADS", None)
    env["OPENBLAS_NUM_THREADS"] = "2"  # more than one thread to start from (cores permitting)
    if env_value is not None:
        env["SPACE_JAX_LAPACK_THREADS"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res["before"], res["after"]


def _is_scipys(path: str) -> bool:
    return "scipy" in path and "numpy" not in path


def test_first_decomposition_sets_scipys_lapack_to_one_thread_and_nothing_else():
    before, after = _probe(None)
    scipys = [p for p in after if _is_scipys(p)]
    assert scipys, f"no SciPy BLAS found among {list(after)}"
    for path, n in after.items():
        if path in scipys:
            assert n == 1, (path, before[path], n)
        else:
            assert n == before.get(path, n), (path, before.get(path), n)


@pytest.mark.parametrize("value", ["0", "3"])
def test_environment_variable_chooses_or_keeps_the_thread_count(value):
    before, after = _probe(value)
    scipys = [p for p in after if _is_scipys(p)]
    assert scipys
    want = {before[p] for p in scipys} if value == "0" else {int(value)}  # "0": left alone
    assert {after[p] for p in scipys} == want


@pytest.mark.parametrize("value", ["one", "-1", "1.5"])
def test_bad_environment_variable_is_named(monkeypatch, value):
    monkeypatch.setenv("SPACE_JAX_LAPACK_THREADS", value)
    with pytest.raises(ValueError, match="SPACE_JAX_LAPACK_THREADS"):
        ensure_lapack_threads.__wrapped__()


@pytest.mark.parametrize("n", [0, -2, True, 1.0, "1"])
def test_limit_lapack_threads_refuses_bad_counts(n):
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        linalg.limit_lapack_threads(n)
