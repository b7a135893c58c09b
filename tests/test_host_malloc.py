"""glibc keeps space_jax's large host buffers for reuse (no page faults on every call)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from space_jax._host_malloc import ensure_host_malloc, set_mmap_threshold

# A fresh process: a loss sets the thresholds when traced; then a jitted function whose result
# is 32 MiB runs in a loop, and the minor page faults of each call are counted. With the heap
# reused a call faults about one page; with a fresh mapping per call, every page (8192). Each
# malloc arena (one per thread that allocates) grows once by the buffer's size, and which thread
# serves a call varies, so a call may still grow an arena late (measured over 30 processes: 3 to
# 10 growing calls among the first 10, 0 to 5 among the next 20, the resident size then flat).
# So the tests compare the median call, not the mean.
_PROBE = r"""
import json, resource
import jax, jax.numpy as jnp
import space_jax as sj
z = jnp.ones((16, 8))
w = {"a": jnp.eye(8)[:2]}
sj.disentanglement_loss(z, w).block_until_ready()
big = jnp.ones((2048, 4096), jnp.float32)  # 32 MiB, glibc's largest adaptive threshold
f = jax.jit(lambda x: x * 2.0)
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(big).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"faults": faults[10:]}))
"""

_PAGES = 32 * 2**20 // 4096  # what a fresh 32 MiB mapping faults in, with 4 KiB pages

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the thresholds are glibc's (elsewhere the module leaves malloc alone, tested below)",
)


def _faults(**env_values: str) -> float:
    """The median page faults per call of calls 11 to 30 of ``_PROBE`` under ``env_values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    env.pop("SPACE_JAX_MMAP_THRESHOLD", None)
    env.update(env_values)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr
    faults = json.loads(out.stdout.strip().splitlines()[-1])["faults"]
    return float(statistics.median(faults))


def _huge_pages_always() -> bool:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.exists() and "[always]" in path.read_text()


@glibc
def test_large_buffers_are_reused_once_the_heap_has_grown():
    assert _faults() < _PAGES / 8


@glibc
@pytest.mark.parametrize(
    "env", [{"SPACE_JAX_MMAP_THRESHOLD": "0"}, {"MALLOC_MMAP_THRESHOLD_": "131072"}]
)
def test_malloc_is_left_alone_when_asked_or_chosen_by_the_process(env):
    faults = _faults(**env)
    if _huge_pages_always():  # 2 MiB pages fault 512 times less: nothing to tell apart
        assert faults < _PAGES
    else:
        assert faults > _PAGES / 2


@pytest.mark.parametrize("value", ["lots", "-1", "1.5", str(2**31)])
def test_bad_environment_variable_is_named(monkeypatch, value):
    monkeypatch.setenv("SPACE_JAX_MMAP_THRESHOLD", value)
    with pytest.raises(ValueError, match="SPACE_JAX_MMAP_THRESHOLD"):
        ensure_host_malloc.__wrapped__()


@pytest.mark.parametrize("n", [0, -5, True, 1.0, "1", 2**31])
def test_set_mmap_threshold_refuses_bad_sizes(n):
    with pytest.raises(ValueError, match="n_bytes must be an int"):
        set_mmap_threshold(n)


def test_other_c_libraries_are_left_alone(monkeypatch):
    import space_jax._host_malloc as hm

    monkeypatch.setattr(hm.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert hm.set_mmap_threshold(2**20) is False
