"""The suite's outputs: a markdown report, a JSON file and a log-log plot of time against size."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

from .harness import ratio

__all__ = ["TARGETS", "check_targets", "markdown", "plot", "write"]

_IMPLS = ("spacelearn", "space_jax", "bridge")

# (description, size, operation, kind, threshold): kind "speedup" compares an implementation
# with spacelearn (at least the threshold), "bound" its ratio to the hardware bound (at most).
# The goals of issue #13, on 2 CPU cores, float32.
TARGETS = (
    ("space_jax combined loss fwd+bwd >= 5x spacelearn", "small", "combined_loss fwd+bwd",
     ("speedup", "space_jax"), 5.0),
    ("space_jax combined loss fwd+bwd >= 6x spacelearn", "main", "combined_loss fwd+bwd",
     ("speedup", "space_jax"), 6.0),
    ("space_jax combined loss fwd+bwd >= 15x spacelearn", "large", "combined_loss fwd+bwd",
     ("speedup", "space_jax"), 15.0),
    ("bridge combined loss fwd+bwd >= 3x spacelearn", "small", "combined_loss fwd+bwd",
     ("speedup", "bridge"), 3.0),
    ("bridge combined loss fwd+bwd >= 4x spacelearn", "main", "combined_loss fwd+bwd",
     ("speedup", "bridge"), 4.0),
    ("bridge combined loss fwd+bwd >= 10x spacelearn", "large", "combined_loss fwd+bwd",
     ("speedup", "bridge"), 10.0),
    ("space_jax solve_subspaces >= 3x spacelearn", "small", "solve_subspaces",
     ("speedup", "space_jax"), 3.0),
    ("space_jax solve_subspaces >= 4x spacelearn", "main", "solve_subspaces",
     ("speedup", "space_jax"), 4.0),
    ("space_jax solve_subspaces >= 4x spacelearn", "large", "solve_subspaces",
     ("speedup", "space_jax"), 4.0),
    ("space_jax solve_dims never slower than spacelearn", "small", "solve_dims",
     ("speedup", "space_jax"), 1.0),
    ("space_jax solve_dims >= 2x spacelearn", "main", "solve_dims",
     ("speedup", "space_jax"), 2.0),
    ("space_jax solve_dims >= 2x spacelearn", "large", "solve_dims",
     ("speedup", "space_jax"), 2.0),
    ("space_jax combined loss fwd+bwd within 1.5x the bound", "main", "combined_loss fwd+bwd",
     ("bound", "space_jax"), 1.5),
    ("space_jax combined loss fwd+bwd within 1.5x the bound", "large", "combined_loss fwd+bwd",
     ("bound", "space_jax"), 1.5),
)  # fmt: skip


# The statistic the report shows: "median" (default) or "min" of the rounds (both are in the
# JSON file). The minimum estimates the unloaded time when other work shares the machine.
STATISTICS = ("median", "min")
_STAT_WORDS = {"median": "Medians", "min": "Minima"}


def _statistic(results: dict) -> str:
    stat = (results.get("config") or {}).get("stat") or "median"
    if stat not in STATISTICS:
        raise ValueError(f"stat: expected one of {STATISTICS}, got {stat!r}")
    return stat


def _median(row: dict, impl: str, stat: str = "median") -> float | None:
    t = row["times"].get(impl)
    return None if t is None else t[f"{stat}_s"]


def _rr(row: dict, a: str, b: str, stat: str = "median") -> float | None:
    """``a / b`` in one row: the median of the per-round ratios (:func:`harness.ratio`)."""
    return ratio(row["times"].get(a), row["times"].get(b), stat)


def _ms(x: float | None) -> str:
    if x is None:
        return "–"
    ms = x * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _x(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


def _mib(x: int | None) -> str:
    return "–" if x is None else f"{x / 2**20:.1f}"


def _size_label(size: dict) -> str:
    return f"{size['name']} ({size['B']}, {size['D']}, {size['Q']}, {size['k']}, {size['m']})"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _target_value(row: dict | None, kind: str, impl: str, stat: str) -> float | None:
    if row is None:
        return None
    if kind == "speedup":
        return _rr(row, "spacelearn", impl, stat)
    return _rr(row, impl, "bound", stat)


def check_targets(results: dict) -> list[dict]:
    """Each target with its measured value (one process) and, for the headline rows, the value
    with each implementation in its own process; met when every measured value meets it
    (None: not measured)."""
    by_key = {(r["size"]["name"], r["op"]): r for r in results.get("rows", [])}
    by_proc = {
        (r["size"]["name"], r["op"]): r for r in results.get("processes") or [] if "times" in r
    }
    stat = _statistic(results)
    out = []
    for text, size, op, (kind, impl), threshold in TARGETS:
        value = _target_value(by_key.get((size, op)), kind, impl, stat)
        separate = _target_value(by_proc.get((size, op)), kind, impl, stat)
        values = [v for v in (value, separate) if v is not None]
        met = None
        if values:
            met = all(v >= threshold if kind == "speedup" else v <= threshold for v in values)
        out.append(
            {
                "target": text,
                "size": size,
                "value": value,
                "separate_processes": separate,
                "met": met,
            }
        )
    return out


def _main_table(rows: list[dict], notes: list[str], stat: str) -> list[str]:
    header = [
        "size (B, D, Q, k, m)",
        "operation",
        "spacelearn ms",
        "space_jax ms",
        "bridge ms",
        "bound ms",
        "space_jax speedup",
        "bridge speedup",
        "space_jax / bound",
        "bridge / bound",
        "space_jax compile s",
    ]
    body = []
    for r in rows:
        if "times" not in r:
            body.append([_size_label(r["size"]), r["op"], f"error: {r.get('error')}"] + [""] * 8)
            continue
        marks = ""
        for n in r.get("notes", []):
            if n not in notes:
                notes.append(n)
            marks += f" [{notes.index(n) + 1}]"
        ref, jx, br, bound = (
            _median(r, k, stat) for k in ("spacelearn", "space_jax", "bridge", "bound")
        )
        compile_s = r["times"].get("space_jax", {}).get("compile_s")
        body.append(
            [
                _size_label(r["size"]),
                r["op"] + marks,
                _ms(ref),
                _ms(jx),
                _ms(br),
                _ms(bound),
                _x(_rr(r, "spacelearn", "space_jax", stat)),
                _x(_rr(r, "spacelearn", "bridge", stat)),
                _x(_rr(r, "space_jax", "bound", stat)),
                _x(_rr(r, "bridge", "bound", stat)),
                "–" if compile_s is None else f"{compile_s:.2f}",
            ]
        )
    return _table(header, body)


def _format_value(v) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}"
    if isinstance(v, dict | list):
        return json.dumps(v, default=str)
    return str(v)


def markdown(results: dict) -> str:
    """The report as markdown: targets, the main table, bounds, overhead, memory, sweeps."""
    m = results["machine"]
    v = m["versions"]
    stat = _statistic(results)
    blas = ", ".join(
        f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')}, "
        f"{b.get('num_threads')} threads)"
        for b in m.get("numpy_blas", [])
        if b.get("user_api") == "blas"
    )
    lines = [
        "# space_jax benchmarks",
        "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores ({m['logical_cores']} logical); "
        f"{m['platform']}; Python {m['python']}; jax {v.get('jax')} ({m['jax_backend']}), "
        f"numpy {v.get('numpy')} with {blas or 'unknown BLAS'}, torch {v.get('torch')} "
        f"({m.get('torch_threads')} threads), spacelearn {v.get('spacelearn')}. "
        f"Load average (1, 5, 15 min) at start {_load(m.get('load_average_start'))}, "
        f"at end {_load(m.get('load_average_end'))}. XLA_FLAGS: `{m.get('xla_flags') or 'none'}`."
        + (
            " Run with `--single-thread`: one thread in XLA, OpenBLAS and torch."
            if (results.get("config") or {}).get("single_thread")
            else ""
        ),
        "",
        f"Method: each implementation runs a block of consecutive calls (its steady state, "
        f"about {_timing(results, 'block_s', 0.2)} s) after a pause of "
        f"{_timing(results, 'pause_s', 0.05)} s that lets the other libraries' threads go idle; "
        "the blocks alternate in order from round to round; a round's figure is its block's "
        f"median call. Times are {_STAT_WORDS[stat].lower()} over rounds; ratios (speedups, "
        "x / bound) are the median over rounds of the per-round ratios, so both sides of a "
        "ratio come from the same round. float32, the same inputs for all. fwd+bwd = the loss "
        "and its gradient with respect to Z (W for stability); the bridge times include the "
        "DLPack conversions and torch autograd. bound = `Zc.T @ Zc` plus one `B x D x D` "
        "product, the fastest of NumPy's BLAS, XLA and torch in each round (timed with the "
        "combined loss only); speedup = spacelearn time / time; compile = first call minus a "
        "steady call. The headline rows are confirmed with each implementation in a process "
        "of its own (section 'Separate processes'). Every process, spacelearn's included, "
        "runs with the malloc thresholds space_jax sets (README, 'Large host buffers').",
        "",
    ]
    targets = results.get("targets") or check_targets(results)
    if targets:
        lines += ["## Targets", ""]
        lines += _table(
            ["target", "size", "one process", "separate processes", "met"],
            (
                [
                    t["target"],
                    t["size"],
                    _x(t["value"]),
                    _x(t.get("separate_processes")),
                    {True: "yes", False: "**missed**", None: "not measured"}[t["met"]],
                ]
                for t in targets
            ),
        )
        lines.append("")

    notes: list[str] = []
    if results.get("rows"):
        lines += ["## Operations", ""]
        lines += _main_table(results["rows"], notes, stat)
        lines.append("")

    processes = results.get("processes") or []
    if processes:
        lines += [
            "## Separate processes",
            "",
            "The headline rows again, each implementation in its own worker process (the three "
            "bounds share a fourth), the workers taking turns block by block as above.",
            "",
        ]
        lines += _main_table(processes, notes, stat)
        lines.append("")

    bound_rows = [
        r for r in [*results.get("rows", []), *processes] if "bound_xla" in r.get("times", {})
    ]
    if bound_rows:
        lines += [
            "## The hardware bound through three BLAS",
            "",
            "`Zc.T @ Zc` and `Zc @ G`, float32, in the same rounds as the combined loss; the "
            "bound is the fastest of the three in each round.",
            "",
        ]
        lines += _table(
            ["size", "method", "NumPy ms", "XLA ms", "torch ms", "bound ms"],
            (
                [_size_label(r["size"]), r.get("method", "")]
                + [
                    _ms(_median(r, k, stat))
                    for k in ("bound_numpy", "bound_xla", "bound_torch", "bound")
                ]
                for r in bound_rows
            ),
        )
        lines.append("")

    overhead = results.get("bridge_overhead")
    if overhead:
        lines += ["## Bridge overhead on tiny inputs", ""]
        if overhead.get("rows"):
            r = overhead["rows"][0]
            ref, jx, br = (_median(r, k, stat) for k in ("spacelearn", "space_jax", "bridge"))
            nograd = _median(r, "bridge_no_grad", stat)
            lines += [
                f"Size {_size_label(r['size'])}: combined loss fwd+bwd takes "
                f"{_ms(ref)} ms in spacelearn, {_ms(jx)} ms in space_jax "
                f"(jitted) and {_ms(br)} ms through the bridge, so the bridge's fixed cost "
                f"(conversions, checks, autograd) is about "
                f"{_ms(None if br is None or jx is None else br - jx)} ms per call "
                f"(forward only under `torch.no_grad()`: {_ms(nograd)} ms).",
                "",
            ]
        else:
            lines += [overhead.get("status", "not measured"), ""]

    mem_rows = [r for r in results.get("rows", []) if r.get("peak_memory_bytes")]
    if mem_rows:
        lines += [
            "## Peak memory of one combined loss fwd+bwd",
            "",
            "Peak resident memory above the level before the call (MiB; Linux `VmHWM` after "
            "resetting it), and XLA's temporary buffers of the compiled space_jax program.",
            "",
        ]
        body = []
        for r in mem_rows:
            pk = r["peak_memory_bytes"]
            xla = r.get("xla_memory") or {}
            body.append(
                [_size_label(r["size"]), _mib(r.get("input_bytes"))]
                + [_mib(pk.get(k)) for k in _IMPLS]
                + [_mib(xla.get("temp_size_in_bytes"))]
            )
        lines += _table(
            ["size", "inputs", "spacelearn", "space_jax", "bridge", "XLA temp buffers"], body
        )
        lines.append("")

    for axis, sweep in (results.get("sweeps") or {}).items():
        if not sweep:
            continue
        fixed = sweep[0]["size"]
        lines += [
            f"## Combined loss fwd+bwd against {axis}",
            "",
            "Others fixed at "
            + ", ".join(f"{k}={fixed[k]}" for k in ("B", "D", "Q", "k", "m") if k != axis)
            + ".",
            "",
        ]
        body = []
        for r in sweep:
            ref, jx, br, bound = (
                _median(r, k, stat) for k in ("spacelearn", "space_jax", "bridge", "bound")
            )
            body.append(
                [str(r["size"][axis]), _ms(ref), _ms(jx), _ms(br), _ms(bound)]
                + [
                    _x(_rr(r, "spacelearn", "space_jax", stat)),
                    _x(_rr(r, "space_jax", "bound", stat)),
                    _x(_rr(r, "spacelearn", "bound", stat)),
                ]
            )
            for n in r.get("notes", []):
                if n not in notes:
                    notes.append(n)
        lines += _table(
            [
                axis,
                "spacelearn ms",
                "space_jax ms",
                "bridge ms",
                "bound ms",
                "space_jax speedup",
                "space_jax / bound",
                "spacelearn / bound",
            ],
            body,
        )
        lines.append("")

    extras = results.get("extras") or {}
    if extras:
        lines += ["## Other benchmarks", ""]
        for name, runs in extras.items():
            lines += [f"### {name}", ""]
            for label, out in runs.items():
                if not isinstance(out, dict) or "status" in out and len(out) <= 2:
                    status = out.get("status") if isinstance(out, dict) else out
                    detail = out.get("error", "") if isinstance(out, dict) else ""
                    lines += [f"- {label}: {status}{' (' + detail + ')' if detail else ''}"]
                    continue
                lines += [f"{label}:", ""]
                lines += _table(
                    ["quantity", "value"], ([k, _format_value(x)] for k, x in _flatten(out))
                )
                lines.append("")
            lines.append("")

    if notes:
        lines += ["## Notes", ""]
        lines += [f"{i + 1}. {n}" for i, n in enumerate(notes)]
        lines.append("")
    return "\n".join(lines)


def _flatten(d: dict, prefix: str = "") -> Iterable[tuple[str, object]]:
    """Nested dicts as ``a.b`` keys; the machine description is skipped (it is at the top)."""
    for k, v in d.items():
        if k == "machine":
            continue
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _timing(results: dict, key: str, default: float) -> str:
    value = ((results.get("config") or {}).get("timing") or {}).get(key, default)
    return f"{value:g}"


def _load(x) -> str:
    return "–" if not x else ", ".join(f"{v:.2f}" for v in x)


def plot(results: dict, path: Path) -> Path | None:
    """Log-log plot of the combined loss fwd+bwd time against B and against D."""
    sweeps = {k: v for k, v in (results.get("sweeps") or {}).items() if v}
    if not sweeps:
        return None
    stat = _statistic(results)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.5 * len(sweeps), 4.2), squeeze=False)
    styles = {
        "spacelearn": ("spacelearn 0.1.0", "o-"),
        "space_jax": ("space_jax (jit)", "s-"),
        "bridge": ("space_torch_bridge", "^-"),
        "bound": ("bound: fastest BLAS (NumPy, XLA, torch)", "k--"),
    }
    for ax, (axis, sweep) in zip(axes[0], sweeps.items(), strict=True):
        xs = [r["size"][axis] for r in sweep]
        for impl, (label, style) in styles.items():
            ys = [_median(r, impl, stat) for r in sweep]
            pts = [(x, y * 1e3) for x, y in zip(xs, ys, strict=True) if y is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=label, markersize=4)
        fixed = sweep[0]["size"]
        others = ", ".join(f"{k}={fixed[k]}" for k in ("B", "D", "Q", "k", "m") if k != axis)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel=axis,
            ylabel="time per call (ms)",
            title=f"combined loss fwd+bwd ({others})",
        )
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    if hasattr(x, "item"):
        return _jsonable(x.item())
    return str(x)


def write(results: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes ``results.json``, ``results.md`` and ``scaling.png`` (with sweeps) to ``out_dir``.

    Each file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {**results, "targets": check_targets(results)}
    paths = {}

    def atomic(name: str, text: str) -> Path:
        path = out / name
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    paths["json"] = atomic("results.json", json.dumps(_jsonable(results), indent=1) + "\n")
    paths["markdown"] = atomic("results.md", markdown(results))
    tmp_png = out / ".scaling.tmp.png"
    if plot(results, tmp_png) is not None:
        os.replace(tmp_png, out / "scaling.png")
        paths["plot"] = out / "scaling.png"
    return paths
