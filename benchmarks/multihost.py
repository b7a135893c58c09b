"""The cost of SPACE's all-reduce across processes, against one process on the whole batch.

Three kinds of separate processes time the same jitted calls (each in its own steady state:
warm-up, then ``repeats`` calls, median) on the main benchmark size:

* one process, one CPU device, the whole batch;
* ``processes`` processes x ``local_devices`` CPU devices (loopback, gloo collectives), each
  holding only its share of the batch on a mesh with Explicit axes;
* in the same multi-process run, the all-reduce alone: a jitted sum over devices of as many
  float32 numbers as the step's compiled HLO all-reduces (read from the HLO).

On a machine with fewer cores than devices the multi-process step cannot be faster (the same
arithmetic shares the cores); what the figures show is the price of the collectives.

    python -m benchmarks.multihost            # prints one JSON object
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_DTYPE_BYTES = {"f32": 4, "f64": 8, "bf16": 2, "f16": 2, "s32": 4, "pred": 1}


def _launcher():
    spec = importlib.util.spec_from_file_location(
        "multihost_example", ROOT / "examples/multihost.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.launch


def _median_s(fn, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn())  # compiled and warm
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def all_reduced_bytes(hlo: str) -> int:
    """Bytes all-reduced per call, summed over the ``all-reduce`` ops of compiled HLO text."""
    total = 0
    for line in hlo.splitlines():
        if " all-reduce(" not in line and " all-reduce-start(" not in line:
            continue
        lhs = line.split("=", 1)[1] if "=" in line else line
        head = lhs.split("all-reduce", 1)[0]
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", head):
            n = 1
            for d in filter(None, dims.split(",")):
                n *= int(d)
            total += n * _DTYPE_BYTES.get(dtype, 4)
    return total


def _worker(mode: str, B: int, D: int, Q: int, k: int, m: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import space_jax as sj
    from benchmarks.problems import Size, make_problem

    prob = make_problem(Size("main", B, D, Q, k, m))
    K = dict.fromkeys(prob.W, k)
    if mode == "single":
        Z, Y = jax.device_put((prob.Z, prob.Y), jax.devices()[0])
    else:
        pid, n = jax.process_index(), jax.process_count()
        mesh = jax.make_mesh((jax.device_count(),), ("batch",))  # Explicit axes
        batch = NamedSharding(mesh, P("batch"))
        rows = slice(pid * B // n, (pid + 1) * B // n)
        Z = jax.make_array_from_process_local_data(batch, prob.Z[rows])
        Y = {q: jax.make_array_from_process_local_data(batch, y[rows]) for q, y in prob.Y.items()}
    W, A, W_prev = prob.W, prob.A, prob.W_prev
    if mode != "single":
        W, A, W_prev = jax.device_put((W, A, W_prev), NamedSharding(mesh, P()))

    grad = jax.jit(jax.value_and_grad(sj.combined_loss))
    solve = jax.jit(lambda Z, Y: sj.solve_subspaces(Z, Y, k=K))
    out = {
        "combined_loss fwd+bwd ms": 1e3 * _median_s(lambda: grad(Z, W, A, Y, W_prev), repeats),
        "solve_subspaces ms": 1e3 * _median_s(lambda: solve(Z, Y), repeats),
    }
    if mode != "single":
        hlo = grad.lower(Z, W, A, Y, W_prev).compile().as_text()
        nbytes = all_reduced_bytes(hlo)
        out["combined_loss all-reduced KiB"] = nbytes / 1024
        out["combined_loss all-gathers"] = hlo.count("all-gather")
        n_dev = jax.device_count()
        stats = jax.make_array_from_process_local_data(
            NamedSharding(mesh, P("batch")),
            np.ones((n_dev // jax.process_count(), max(nbytes // 4, 1)), np.float32),
        )
        reduce = jax.jit(lambda x: jnp.sum(x, axis=0))
        out["all-reduce alone ms"] = 1e3 * _median_s(lambda: reduce(stats), repeats)
        out["processes"], out["devices"] = jax.process_count(), n_dev
    return out


def _last_json(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


def run(
    B: int = 4096,
    D: int = 256,
    Q: int = 4,
    k: int = 16,
    m: int = 64,
    *,
    processes: int = 2,
    local_devices: int = 2,
    repeats: int = 20,
    timeout: float = 600.0,
) -> dict:
    """Times one process against ``processes`` x ``local_devices`` (see the module doc)."""
    sizes = ["--B", str(B), "--D", str(D), "--Q", str(Q), "--k", str(k), "--m", str(m)]
    sizes += ["--repeats", str(repeats)]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, "-m", "benchmarks.multihost", *sizes]
    single = subprocess.run(
        [*command, "--mode", "single"], env=env, capture_output=True, text=True, timeout=timeout
    )
    if single.returncode != 0:
        return {"status": "error", "error": single.stdout + single.stderr}
    one = _last_json(single.stdout)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        results = _launcher()(
            [*command, "--mode", "distributed", "--local-devices", str(local_devices)],
            processes,
            timeout,
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    for status, output in results:
        if status != 0:
            return {"status": "error", "error": output[-4000:]}
    many = [_last_json(o) for _, o in results]
    dist = many[0]
    step_1, step_n = one["combined_loss fwd+bwd ms"], dist["combined_loss fwd+bwd ms"]
    return {
        "size": {"B": B, "D": D, "Q": Q, "k": k, "m": m},
        "one process": one,
        f"{processes} x {local_devices} devices": {f"process {i}": r for i, r in enumerate(many)},
        "combined_loss ratio (distributed / one)": step_n / step_1,
        "all-reduce / one-process step": dist["all-reduce alone ms"] / step_1,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["single", "distributed"])
    for name, default in (("B", 4096), ("D", 256), ("Q", 4), ("k", 16), ("m", 64)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--local-devices", type=int, default=2)
    p.add_argument("--process-id", type=int)
    p.add_argument("--num-processes", type=int)
    p.add_argument("--port", type=int)
    args = p.parse_args()
    sizes = (args.B, args.D, args.Q, args.k, args.m, args.repeats)
    if args.mode is None:
        print(json.dumps(run(*sizes[:5], repeats=args.repeats), indent=1))
        return
    import jax

    jax.config.update("jax_platforms", "cpu")
    if args.mode == "distributed":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.config.update("jax_num_cpu_devices", args.local_devices)
        jax.distributed.initialize(
            f"127.0.0.1:{args.port}", num_processes=args.num_processes, process_id=args.process_id
        )
    print(json.dumps(_worker(args.mode, *sizes)), flush=True)
    if args.mode == "distributed":
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
