"""A whole PyTorch training step with SPACE: spacelearn 0.1.0 against space_torch_bridge.

    python -m benchmarks.torch_step [--sizes small,main] [--steps 15] [--processes 2]
        [--variants default,OMP_WAIT_POLICY=PASSIVE] [--env KEY=VALUE ...]

The step is what a PyTorch user runs: an MLP autoencoder (``main``: B=4096, 512 -> 1024 -> D=256
and back; ``small``: B=512, 128 -> 256 -> D=64 and back), Adam, the reconstruction MSE, plus
``combined_loss`` on the latents (``main``: 4 quantities of 64 dims, k=16; ``small``: 2 of 16,
k=8), with bases and decoders fitted once from the initial latents. SPACE's share of the step is
the step time with ``combined_loss`` minus the step time without it, taken per pair of adjacent
steps.

Method: each library runs in its own process (``--processes`` per library, alternating
spacelearn, bridge, spacelearn, ...), so neither inherits the other's spinning thread pools;
within a process steps with and without the loss alternate after a warm-up (in both orders in
turn), SPACE's share is the median over the pairs of their difference, and each figure is then
the median over that library's processes. Torch runs with its
default threads (2 on the reference machine). Each library is measured in two process
environments: the default, and ``OMP_WAIT_POLICY=PASSIVE`` (torch's OpenMP workers sleep instead
of spin-waiting after each parallel region; see the README's PyTorch section). The step is also
split into its phases (forward, the SPACE call, backward, Adam), to show where the time goes.
``make bench`` runs it through ``benchmarks.run`` (as an extra, ``run(size)`` per size).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from .harness import result_in_subprocess

__all__ = ["SIZES", "run", "step_times"]

# name: (B, input features, hidden, D, Q, m, k)
SIZES = {
    "small": (512, 128, 256, 64, 2, 16, 8),
    "main": (4096, 512, 1024, 256, 4, 64, 16),
}
IMPLS = ("spacelearn", "bridge")
# The step's phases: model forward + reconstruction, the SPACE loss call, backward, Adam.
PHASES = ("forward", "space call", "backward", "adam")
# Process environments compared: what users get, and torch's OpenMP threads told not to
# spin-wait (libgomp reads OMP_WAIT_POLICY when torch is imported, so only a fresh process
# can change it).
VARIANTS = {"default": {}, "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}


def step_times(impl: str, size: str, steps: int, warmup: int = 5) -> dict:
    """In this process: median step times with and without ``combined_loss`` (seconds)."""
    import contextlib
    import io

    import torch
    from torch import nn

    from space_jax._host_malloc import ensure_host_malloc

    ensure_host_malloc()  # both libraries' processes run with space_jax's malloc settings
    if impl == "bridge":
        import space_torch_bridge as lib
    else:
        import spacelearn as lib

    B, n_in, hidden, D, Q, m, k = SIZES[size]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, n_in, generator=g)
    mixes = [torch.randn(n_in, m, generator=g) / n_in**0.5 for _ in range(Q)]
    Y = {f"q{i}": torch.tanh(x @ mix) for i, mix in enumerate(mixes)}
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, D))
    decoder = nn.Sequential(nn.Linear(D, hidden), nn.ReLU(), nn.Linear(hidden, n_in))
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    quiet = contextlib.redirect_stdout(io.StringIO())  # spacelearn prints from its losses
    with torch.no_grad(), quiet:
        space = lib.solve_subspaces(encoder(x), Y, k=k)
    W, A = space.W, space.A
    W_prev = {q: (w + 1e-3).contiguous() for q, w in W.items()}

    def step(with_space: bool) -> dict[str, float]:
        t = [time.perf_counter()]
        c0 = time.process_time()
        z = encoder(x)
        loss = nn.functional.mse_loss(decoder(z), x)
        t.append(time.perf_counter())
        if with_space:
            with contextlib.redirect_stdout(io.StringIO()):
                loss = loss + lib.combined_loss(z, W, A, Y, W_prev)
        t.append(time.perf_counter())
        optimizer.zero_grad()
        loss.backward()
        t.append(time.perf_counter())
        optimizer.step()
        t.append(time.perf_counter())
        phases = dict(zip(PHASES, (b - a for a, b in zip(t, t[1:], strict=False)), strict=True))
        return {"step": t[-1] - t[0], "cpu": time.process_time() - c0, **phases}

    for i in range(warmup):
        step(i % 2 == 0)
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for i in range(steps):
        # Both orders in turn, so that neither kind of step always follows the other.
        for with_space in (False, True) if i % 2 == 0 else (True, False):
            runs[with_space].append(step(with_space))
    return _summary(runs)


def _summary(runs: dict[bool, list[dict]]) -> dict:
    """Seconds: medians of each kind of step, and SPACE's share as the median of the paired
    differences (step ``i`` with the loss minus step ``i`` without it, taken next to each other)
    rather than a difference of medians, which adds both medians' noise."""
    med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in runs.items()}

    def paired(key: str) -> float:
        pairs = zip(runs[True], runs[False], strict=True)
        return statistics.median(a[key] - b[key] for a, b in pairs)

    out = {
        "plain_s": med[False]["step"],
        "with_space_s": med[True]["step"],
        "space_s": paired("step"),
        "cpu_space_s": paired("cpu"),
    }
    for phase in PHASES:
        out[f"{phase} plain_s"] = med[False][phase]
        out[f"{phase} with_space_s"] = med[True][phase]
    return out


def _worker(impl: str, size: str, steps: int, env: dict[str, str]) -> dict:
    return result_in_subprocess(
        "torch_step",
        "step_times",
        (impl, size, steps),
        env={**os.environ, **env},
        label=f"{impl} at {size}",
    )


def run(
    size: str = "main",
    *,
    steps: int = 15,
    processes: int = 2,
    variants=("default", "OMP_WAIT_POLICY=PASSIVE"),
    env=None,
    log=None,
) -> dict:
    """Both libraries at ``size``, per process environment, in alternating processes.

    Returns milliseconds (medians over steps, then over processes) per variant and library:
    the plain step, the step with SPACE, SPACE's share (their difference), its CPU time, and
    each phase; then spacelearn's share over the bridge's (the target is >= 3).
    """
    out: dict = {"B, in, hidden, D, Q, m, k": str(SIZES[size])}
    for variant in variants:
        runs: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
        for _ in range(processes):
            for impl in IMPLS:
                worker_env = {**VARIANTS[variant], **dict(env or {})}
                runs[impl].append(_worker(impl, size, steps, worker_env))
                if log:
                    log(f"  torch_step {size} {variant} {impl}: {runs[impl][-1]['space_s']:.4f} s")
        for impl in IMPLS:
            for key in runs[impl][0]:
                value = statistics.median(r[key] for r in runs[impl])
                out[f"{variant}: {impl} {key[:-2]} ms"] = round(1e3 * value, 2)
            shares = ", ".join(f"{1e3 * r['space_s']:.3g}" for r in runs[impl])
            out[f"{variant}: {impl} space ms, each process"] = shares
        sl, br = out[f"{variant}: spacelearn space ms"], out[f"{variant}: bridge space ms"]
        out[f"{variant}: SPACE share spacelearn / bridge"] = round(sl / br, 2) if br > 0 else None
        out[f"{variant}: target >= 3x"] = "met" if br > 0 and sl / br >= 3 else "missed"
    out["method"] = (
        f"separate processes ({processes} per library and variant, alternating), "
        f"{steps} alternating step pairs each after 5 warm-up steps; SPACE's share: median of the "
        "paired differences; other figures: medians"
    )
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="small,main")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"of {list(VARIANTS)}")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the workers")
    args = p.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    results = {}
    for size in [s for s in args.sizes.split(",") if s]:
        results[size] = run(
            size,
            steps=args.steps,
            processes=args.processes,
            variants=[v for v in args.variants.split(",") if v],
            env=env,
            log=log,
        )
        print(json.dumps({size: results[size]}, indent=1))
    return results


if __name__ == "__main__":
    main()
