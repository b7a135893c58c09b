"""Smoke test of the benchmark suite: one quick run at the smallest size, outputs well-formed.

No timed assertions: timings depend on the machine and its load. The suite's neighbours
(``benchmarks.shared_space``, ``benchmarks.sweep``, ``benchmarks.streaming``) have their own
tests; here only the way the suite calls and reports them is checked, with stand-ins.
"""

from __future__ import annotations

import json
import math
import sys
import types

import pytest

pytest.importorskip("spacelearn")  # the reference, a dev dependency
pytest.importorskip("matplotlib")

from benchmarks import harness, problems, report, run, solo  # noqa: E402

OPS = {
    "combined_loss fwd+bwd",
    "combined_loss fwd",
    "alignment_loss fwd+bwd",
    "disentanglement_loss fwd+bwd",
    "isotropy_loss fwd+bwd",
    "stability_loss fwd+bwd",
    "solve_subspaces",
    "solve_dims",
    "pool",
}


def _check_timing(t: dict) -> None:
    assert set(t) == {"median_s", "min_s", "first_s", "rounds", "calls", "samples", "compile_s"}
    assert 0 < t["min_s"] <= t["median_s"] and math.isfinite(t["median_s"])
    assert t["first_s"] > 0 and t["compile_s"] >= 0 and t["rounds"] >= 2
    assert len(t["samples"]) == t["rounds"] and t["calls"] >= 1


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--sizes", "small", "--quick", "--out", str(out), "--no-extras", "--quiet"]
    argv += ["--no-processes"]  # the separate processes have their own test (below)
    return out, run.main(argv)


def test_quick_run_writes_json_markdown_and_plot(quick_run):
    out, results = quick_run
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "results.json").read_text())
    assert data["machine"]["versions"]["jax"] and data["machine"]["usable_cores"] >= 1
    assert {r["op"] for r in data["rows"]} == OPS
    bridge = data["bridge"]["available"]
    for row in data["rows"]:
        assert row["size"] == {"name": "small", "B": 512, "D": 64, "Q": 2, "k": 8, "m": 16}
        expected = {"spacelearn", "space_jax"} | ({"bridge"} if bridge else set())
        if row["op"] == "combined_loss fwd+bwd":
            expected |= {"bound", "bound_numpy", "bound_xla", "bound_torch"}
        assert expected <= set(row["times"])
        for t in row["times"].values():
            _check_timing(t)
    assert [t["target"] for t in data["targets"]] == [t[0] for t in report.TARGETS]

    markdown = (out / "results.md").read_text()
    assert "| size (B, D, Q, k, m) | operation |" in markdown
    for op in OPS:
        assert f"| small (512, 64, 2, 8, 16) | {op}" in markdown
    assert results["paths"]["json"].endswith("results.json")

    # The same results, rendered again with the rounds' minima instead of their medians.
    again = out / "minima"
    run.main(["--render", str(out / "results.json"), "--stat", "min", "--out", str(again)])
    assert "Times are minima over rounds" in (again / "results.md").read_text()
    assert (again / "scaling.png").exists()


def test_quick_run_compares_like_with_like(quick_run):
    _, results = quick_run
    combined = next(r for r in results["rows"] if r["op"] == "combined_loss fwd+bwd")
    # Small enough for spacelearn's exact SVD: every implementation returns the same loss.
    values = combined["values"]
    assert values["space_jax"] == pytest.approx(values["spacelearn"], rel=1e-4)
    if "bridge" in values:
        assert values["bridge"] == pytest.approx(values["spacelearn"], rel=1e-4)
    times = combined["times"]
    assert {"bound_numpy", "bound_xla", "bound_torch"} <= set(times)
    # The bound is the fastest BLAS of each round.
    for r, b in enumerate(times["bound"]["samples"]):
        assert b == min(times[k]["samples"][r] for k in ("bound_numpy", "bound_xla", "bound_torch"))

    assert set(combined["peak_memory_bytes"]) <= {"spacelearn", "space_jax", "bridge"}
    for axis in ("B", "D"):
        sweep = results["sweeps"][axis]
        assert len(sweep) >= 2 and all(r["op"] == "combined_loss fwd+bwd" for r in sweep)
        sizes = [r["size"][axis] for r in sweep]
        assert sizes == sorted(sizes)
    if results["bridge"]["available"]:
        overhead = results["bridge_overhead"]["rows"][0]
        assert overhead["size"]["name"] == "tiny"
        assert {"space_jax", "bridge", "bridge_no_grad"} <= set(overhead["times"])


def test_neighbour_benchmarks_are_called_and_reported(monkeypatch):
    calls = []

    def fake_run(size):
        calls.append(size)
        if size == "large":
            raise RuntimeError("out of time")
        return {"size": size, "epoch_s": 0.5, "nested": {"speedup": 3.0}, "machine": {"x": 1}}

    fake = types.ModuleType("benchmarks.fake_neighbour")
    fake.SIZES = {"small": None, "medium": None, "large": None}
    fake.run = fake_run
    monkeypatch.setitem(sys.modules, "benchmarks.fake_neighbour", fake)

    sizes = ["small", "main", "large"]
    theirs = {s: run._their_size(fake, s) for s in sizes}
    assert theirs == {"small": "small", "main": "medium", "large": "large"}
    out = run._call_extra("fake_neighbour", {s: ((theirs[s],), {}) for s in sizes}, print)
    assert calls == ["small", "medium", "large"]
    assert out["main"]["nested"] == {"speedup": 3.0}
    assert out["large"] == {"status": "error", "error": "RuntimeError: out of time"}
    assert run._call_extra("no_such_neighbour", {"small": ((), {})}, print) == {
        "all sizes": {"status": "not available", "error": "no module benchmarks.no_such_neighbour"}
    }

    results = {"machine": harness.machine(), "rows": [], "extras": {"fake_neighbour": out}}
    markdown = report.markdown(results)
    assert "| nested.speedup | 3 |" in markdown and "| epoch_s | 0.5 |" in markdown
    assert "- large: error (RuntimeError: out of time)" in markdown
    assert "| machine" not in markdown


def test_separate_processes_take_turns_and_report_like_one_process():
    impls = ["space_jax", "bound_numpy", "bound_xla"]  # two workers: space_jax, the bounds
    timings = solo.time_processes(
        "tiny", "combined_loss fwd+bwd", impls, rounds=2, pause_s=0.0, block_s=0.0
    )
    assert set(timings) == set(impls)
    for t in timings.values():
        _check_timing(t.as_dict())
    row = {"size": problems.TINY.as_dict(), "op": "combined_loss fwd+bwd", "method": "separate"}
    row["times"] = {k: t.as_dict() for k, t in timings.items()}
    row["times"]["bound"] = harness.min_over(
        [row["times"]["bound_numpy"], row["times"]["bound_xla"]]
    )
    results = {"machine": harness.machine(), "rows": [], "processes": [row]}
    assert "## Separate processes" in report.markdown(results)
    with pytest.raises(RuntimeError, match="worker"):
        solo.time_processes("tiny", "no such op", ["space_jax"], rounds=1)


def test_time_blocks_ratios_and_peak_memory():
    counts = {"a": 0, "b": 0}
    order = []

    def bump(name):
        counts[name] += 1
        order.append(name)

    timings = harness.time_blocks(
        {"a": lambda: bump("a"), "b": lambda: bump("b")},
        rounds=4,
        pause_s=0.0,
        block_s=0.0,
        min_calls=3,
    )
    assert counts == {"a": 14, "b": 14}  # first call, warm-up, 4 blocks of 3
    # Blocks of consecutive calls, the order alternating by round: a b | b a | a b | b a.
    blocks = "".join(order[4::3])
    assert blocks == "abbaabba"
    assert all(
        t.rounds == 4 and t.calls == 3 and 0 < t.min_s <= t.median_s for t in timings.values()
    )
    # Ratios are per round, then the median: a round where both are slow cancels.
    a = {"median_s": 2.0, "min_s": 1.0, "samples": [1.0, 10.0, 2.0]}
    b = {"median_s": 1.0, "min_s": 0.5, "samples": [0.5, 10.0, 1.0]}
    assert harness.ratio(a, b) == 2.0
    assert harness.ratio(a, b, "min") == 2.0
    assert harness.ratio(a, None) is None
    fastest = harness.min_over([a, b, {"samples": [3.0, 1.0, 3.0], "first_s": 0.1}])
    assert fastest["samples"] == [0.5, 1.0, 1.0]
    grown = harness.peak_rss_increase(lambda: bytearray(64 * 2**20))
    assert grown is None or grown >= 32 * 2**20


def test_spin_measures_each_case_and_leaves_lapack_at_one_thread():
    import threadpoolctl

    from benchmarks import spin

    assert spin.burnt_ms(lambda: None, window=0.01, repeats=1) >= 0.0
    res = spin.run(window=0.02, repeats=1)
    cases = [k for k in res if k.endswith(" ms")]
    assert {"idle ms", "XLA product ms", "eigh, LAPACK at 1 thread(s) ms"} <= set(cases)
    assert all(res[k] is None or res[k] >= 0.0 for k in cases)
    scipys = [i for i in threadpoolctl.threadpool_info() if "scipy.libs" in i["filepath"]]
    assert scipys and all(i["num_threads"] == 1 for i in scipys)


def test_torch_step_share_is_the_median_of_paired_differences():
    from benchmarks import torch_step

    phases = dict.fromkeys(torch_step.PHASES, 0.0)
    # A slow drift over the run: plain steps 1.0, 2.0, 3.0 s, each with-loss step 0.1 s more.
    plain = [{"step": t, "cpu": t, **phases} for t in (1.0, 2.0, 3.0)]
    with_space = [{"step": t + 0.1, "cpu": t + 0.2, **phases} for t in (1.0, 2.0, 3.0)]
    # One pair disturbed: its with-loss step took 5 s longer. The median ignores it.
    with_space[0] = {**with_space[0], "step": 6.1}
    out = torch_step._summary({False: plain, True: with_space})
    assert math.isclose(out["space_s"], 0.1)
    assert math.isclose(out["cpu_space_s"], 0.2)
    assert out["plain_s"] == 2.0 and out["with_space_s"] == 3.1
    assert {f"{p} plain_s" for p in torch_step.PHASES} <= set(out)


def test_result_in_subprocess_returns_the_child_s_value_or_names_the_failure():
    import os

    timing = {"samples": [0.3, 0.1], "first_s": 1.0}
    env = dict(os.environ)
    got = harness.result_in_subprocess(
        "harness", "min_over", ([timing, timing],), env=env, label="min", timeout=120
    )
    assert got == harness.min_over([timing, timing])  # computed in the child, back as JSON
    with pytest.raises(RuntimeError, match=r"^missing: ImportError: cannot import name"):
        harness.result_in_subprocess("harness", "no_such_function", (), env=env, label="missing")


def test_malloc_benchmark_runs_each_setting_in_a_clean_environment(monkeypatch):
    from benchmarks import malloc

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("SPACE_JAX_MMAP_THRESHOLD", "5")
    env = malloc._clean_env(malloc.SETTINGS["glibc defaults"])
    assert "MALLOC_ARENA_MAX" not in env and env["SPACE_JAX_MMAP_THRESHOLD"] == "0"
    assert "SPACE_JAX_MMAP_THRESHOLD" not in malloc._clean_env({})

    times = iter([10.0, 8.0, 12.0, 9.0, 20.0, 10.0, 11.0, 12.0, 6.0, 30.0, 10.0, 15.0])
    seen = []

    def fake_run(cmd, env, **kwargs):
        if env.get("SPACE_JAX_MMAP_THRESHOLD") == "0":
            seen.append("glibc defaults")
        elif "MALLOC_ARENA_MAX" in env:
            seen.append("launch")
        else:
            seen.append("ours")
        out = {op: {"ms": next(times), "faults": 1.0} for op in malloc._OPS}
        return types.SimpleNamespace(returncode=0, stdout="RESULT" + json.dumps(out), stderr="")

    monkeypatch.setattr(harness.subprocess, "run", fake_run)
    res = malloc.run("main", repeats=2)
    names = list(malloc.SETTINGS)
    order = ["glibc defaults", "ours", "launch"]
    assert seen == order + order[::-1]  # every other repeat in reverse order
    loss = malloc._OPS[0]
    # repeat 1: defaults 10, ours 12, launch 20; repeat 2 (reversed): launch 11, ours 6, defaults 10
    assert res[names[1]][loss]["ratio"] == pytest.approx((1.2 + 0.6) / 2)
    assert res[names[2]][loss]["ms"] == pytest.approx(15.5)
    assert "0.90x" in malloc.table(res)
