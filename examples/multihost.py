"""SPACE on several processes (hosts) with ``jax.distributed``: the README's multi-host recipe.

Every process holds only its own rows of the batch. The global arrays are assembled with
``jax.make_array_from_process_local_data`` on a mesh over all processes' devices, and the
library's functions run on them unchanged: the batch statistics become local products plus one
all-reduce, gradients stay sharded like the latents, and what is small (subspaces, decoders,
moments) comes back replicated on every process.

On one machine, for trying it out (the processes talk over loopback, with gloo collectives
between CPU devices)::

    python examples/multihost.py --processes 2            # spawns 2 processes x 2 CPU devices

On a cluster, run one process per host (or let ``jax.distributed.initialize()`` detect the
cluster, on TPU pods and SLURM)::

    python examples/multihost.py --coordinator HOST0:1234 --num-processes 4 --process-id I

Each process checks its results against one process's on the whole batch (the data here are
synthetic, so every process can rebuild all of it) and process 0 prints the largest
differences; the exit status is non-zero if they exceed float32 rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import space_jax as sj

B, D, K = 256, 32, 4  # global batch, latent size, subspace size


def make_data(seed: int = 0) -> tuple[np.ndarray, dict]:
    """The whole data set (synthetic): latents and two targets that depend on them."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(B, D)).astype(np.float32)
    Y = {
        "field": (Z[:, :8] @ rng.normal(size=(8, 16)) + 0.1 * rng.normal(size=(B, 16))),
        "energy": np.sum(Z[:, 8:12] ** 2, axis=1, keepdims=True),
    }
    return Z, {q: y.astype(np.float32) for q, y in Y.items()}


def load_my_shard(process_id: int, num_processes: int) -> tuple[np.ndarray, dict]:
    """This process's rows only (a real job reads its own files here)."""
    Z, Y = make_data()
    rows = slice(process_id * B // num_processes, (process_id + 1) * B // num_processes)
    return Z[rows], {q: y[rows] for q, y in Y.items()}


def recipe(process_id: int, num_processes: int) -> dict:
    # The recipe as the README shows it; jax.distributed.initialize() has run.
    mesh = jax.make_mesh((jax.device_count(),), ("batch",))  # Explicit axes, JAX's default
    batch = NamedSharding(mesh, P("batch"))

    Z_local, Y_local = load_my_shard(process_id, num_processes)  # this host's rows only
    Z = jax.make_array_from_process_local_data(batch, Z_local)  # global (B, D), sharded
    Y = {q: jax.make_array_from_process_local_data(batch, y) for q, y in Y_local.items()}

    k = sj.k_per_q(Y, 0.9)  # host-level sizing works on global arrays too
    space = jax.jit(lambda Z, Y: sj.solve_subspaces(Z, Y, k=k))(Z, Y)  # replicated everywhere
    grad = jax.jit(jax.grad(sj.combined_loss))(Z, space.W, space.A, Y)  # sharded like Z

    # Streaming: each host folds its own batches; batch i is every host's batch i together.
    my_batches = [(Z_local[i::4], {q: y[i::4] for q, y in Y_local.items()}) for i in range(4)]
    m = sj.stream_moments(my_batches, sharding=batch)  # moments of all hosts' data
    from_moments = jax.jit(lambda m: sj.solve_subspaces_from_moments(m, k))(m)
    return {"k": k, "space": space, "grad": grad, "moments": m, "from_moments": from_moments}


def projectors(space) -> dict:
    """``W_q.T @ W_q`` and ``A_q``'s predictions: independent of the bases' signs."""
    Z, _ = make_data()
    Zc = Z - Z.mean(0)
    return {
        q: (np.asarray(w).T @ np.asarray(w), Zc @ np.asarray(w).T @ np.asarray(space.A[q]))
        for q, w in space.W.items()
    }


def largest_difference(got, want) -> float:
    return max(
        float(np.abs(np.asarray(g, np.float64) - np.asarray(w, np.float64)).max())
        / max(float(np.abs(np.asarray(w)).max()), 1e-30)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    )


def check(result: dict) -> dict:
    """Differences from one process on the whole batch (computed on a local device)."""
    Z, Y = make_data()
    with jax.default_device(jax.local_devices()[0]):
        space = jax.jit(lambda Z, Y: sj.solve_subspaces(Z, Y, k=result["k"]))(Z, Y)
        grad = jax.jit(jax.grad(sj.combined_loss))(Z, space.W, space.A, Y)
        m = sj.moments(Z, Y)
    local = result["grad"].addressable_shards
    return {
        "k": result["k"] == sj.k_per_q(Y, 0.9),
        "solve_subspaces": largest_difference(projectors(result["space"]), projectors(space)),
        "grad": max(largest_difference(s.data, np.asarray(grad)[s.index]) for s in local),
        "grad_sharded_like_Z": result["grad"].sharding.spec[0] == "batch",
        "stream_moments": largest_difference(result["moments"], m),
        "solve_subspaces_from_moments": largest_difference(
            projectors(result["from_moments"]), projectors(space)
        ),
    }


def run_process(coordinator: str, num_processes: int, process_id: int, local_devices: int):
    if local_devices:  # CPU processes on one machine: gloo collectives over loopback
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.config.update("jax_num_cpu_devices", local_devices)
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    report = check(recipe(process_id, num_processes))
    report |= {"process": process_id, "devices": jax.device_count()}
    jax.distributed.shutdown()
    print("REPORT " + json.dumps(report), flush=True)
    ok = report["k"] and report["grad_sharded_like_Z"]
    ok = ok and all(v < 1e-4 for k, v in report.items() if isinstance(v, float))
    return 0 if ok else 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exit_with_parent() -> None:
    """In a spawned process: exit as soon as the launcher is gone, so none is left behind
    (a process waiting in a collective for a dead peer would otherwise wait a long time)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def launch(command: list[str], processes: int, timeout: float) -> list[tuple[int, str]]:
    """Runs ``command --process-id I --num-processes N --port PORT`` ``N`` times on this machine.

    Waits at most ``timeout`` seconds in all; when one process fails the others (which would
    wait for it in a collective) are killed at once, and so are all of them on a timeout.

    Returns:
      ``[(exit status, output)]`` per process; -9 for a killed one.
    """
    port = _free_port()
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(processes)]
    procs = [
        subprocess.Popen(
            [*command, "--process-id", str(i), "--num-processes", str(processes)]
            + ["--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, log in enumerate(logs)
    ]
    deadline = time.monotonic() + timeout
    try:
        while True:
            status = [p.poll() for p in procs]
            if all(s is not None for s in status):
                break
            if any(s not in (None, 0) for s in status) or time.monotonic() > deadline:
                break  # one failed (the others would wait for it) or out of time
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    out = []
    for p, log in zip(procs, logs, strict=True):
        log.seek(0)
        out.append((p.returncode, log.read()))
        log.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, help="spawn this many local CPU processes")
    parser.add_argument("--local-devices", type=int, default=2, help="CPU devices per process")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--coordinator", help="HOST:PORT of process 0 (cluster runs)")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--port", type=int, help="loopback port (spawned processes)")
    args = parser.parse_args()
    if args.processes:
        command = [sys.executable, os.path.abspath(__file__)]
        command += ["--local-devices", str(args.local_devices)]
        results = launch(command, args.processes, args.timeout)
        for i, (status, output) in enumerate(results):
            if status != 0:
                print(f"process {i} exited with {status}:\n{output}", file=sys.stderr)
        reports = [line for _, o in results for line in o.splitlines() if line.startswith("REPORT")]
        print("\n".join(reports))
        return max(abs(status) for status, _ in results)
    if args.port is not None:  # spawned by --processes
        _exit_with_parent()
        coordinator, local_devices = f"127.0.0.1:{args.port}", args.local_devices
    else:
        coordinator, local_devices = args.coordinator, 0
    return run_process(coordinator, args.num_processes, args.process_id, local_devices)


if __name__ == "__main__":
    sys.exit(main())
