"""The operations measured, for spacelearn (the reference), space_jax and the torch bridge.

Each operation of a size is a set of functions of no arguments over inputs prepared once (torch
tensors for spacelearn and the bridge, device arrays passed as *arguments* to module-level jitted
functions for space_jax: arrays closed over would become compile-time constants). They are timed
in steady-state blocks after a pause, alternating by round
(:func:`benchmarks.harness.time_blocks`); the headline rows are confirmed with every
implementation in a process of its own (:mod:`benchmarks.solo`).

The hardware bound ("bound") is the work no implementation of the combined loss and its
gradient can avoid: ``G = Zc.T @ Zc`` and one ``B x D x D`` product (``Zc @ G``) for the
backward pass, on a centered float32 batch, through whichever of NumPy's BLAS
("bound_numpy"), XLA ("bound_xla") and torch ("bound_torch") is fastest in that round: all
three are timed in the same rounds as the combined loss, and the bound of a round is their
minimum (:func:`benchmarks.harness.min_over`).
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .harness import min_over, peak_rss_increase, quiet, time_blocks
from .problems import Problem, Size, make_problem

__all__ = [
    "BOUNDS",
    "IMPLEMENTATIONS",
    "Op",
    "bridge_status",
    "measure",
    "ops_for",
]

IMPLEMENTATIONS = ("spacelearn", "space_jax", "bridge")
BOUNDS = ("bound_numpy", "bound_xla", "bound_torch")

# spacelearn's "auto" solver switches to torch.svd_lowrank (a rank-6 randomised SVD) for
# matrices with more than this many elements.
_REFERENCE_LOWRANK_ABOVE = 100_000


@dataclass
class Op:
    """One measured operation: implementation name -> function of no arguments."""

    name: str
    fns: dict[str, Callable[[], object]]
    notes: list[str] = field(default_factory=list)
    # implementation -> function returning the result as a float (a loss value), for a check.
    values: dict[str, Callable[[], float]] = field(default_factory=dict)
    memory: bool = False


@functools.cache
def bridge_status() -> tuple[object | None, str]:
    """``(module, "")`` when ``space_torch_bridge`` imports, else ``(None, reason)``."""
    try:
        import space_torch_bridge
    except Exception as e:  # noqa: BLE001 - any failure means: not available, say why
        return None, f"space_torch_bridge not available ({type(e).__name__}: {e})"
    return space_torch_bridge, ""


@functools.cache
def _jitted():
    """space_jax's functions, jitted once per process (jit caches compilations per shape)."""
    import jax

    import space_jax as sj

    def grad_z(fn):
        return jax.jit(jax.value_and_grad(fn))

    return {
        "combined_vg": grad_z(sj.combined_loss),
        "combined": jax.jit(sj.combined_loss),
        "alignment_vg": grad_z(sj.alignment_loss),
        "disentanglement_vg": grad_z(sj.disentanglement_loss),
        "isotropy_vg": grad_z(sj.isotropy_loss),
        "stability_vg": grad_z(sj.stability_loss),  # with respect to W
        "solve_subspaces": jax.jit(sj.solve_subspaces, static_argnames=("k", "solver")),
        "pool": jax.jit(sj.pool, static_argnames=("n_bins", "mode")),
        "bound": jax.jit(lambda zc: zc @ (zc.T @ zc)),
    }


class _Inputs:
    """One problem's inputs as torch tensors and as JAX device arrays."""

    def __init__(self, p: Problem):
        import jax
        import torch

        self.p = p

        def t(x, grad=False):
            return torch.from_numpy(x.copy()).requires_grad_(grad)

        def td(d, grad=False):
            return {q: t(x, grad) for q, x in d.items()}

        self.t = {
            "Z": t(p.Z),
            "W": td(p.W),
            "W_prev": td(p.W_prev),
            "A": td(p.A),
            "Y": td(p.Y),
            "fields": td(p.fields),
        }
        # Separate leaves that require grad, so that one implementation's .grad never meets
        # another's.
        self.t_grad = {
            impl: {"Z": t(p.Z, True), "W": td(p.W, True)} for impl in ("spacelearn", "bridge")
        }
        put = jax.device_put
        self.j = {
            "Z": put(p.Z),
            "W": put(p.W),
            "W_prev": put(p.W_prev),
            "A": put(p.A),
            "Y": put(p.Y),
            "fields": put(p.fields),
        }
        zc = p.Z - p.Z.mean(axis=0)
        self.zc = np.ascontiguousarray(zc)
        self.zc_t = torch.from_numpy(self.zc.copy())
        self.zc_j = put(self.zc)


def _block(x):
    import jax

    return jax.block_until_ready(x)


def _backward(loss, leaves):
    for leaf in leaves:
        leaf.grad = None
    loss.backward()
    return loss


def _bounds(ins: _Inputs) -> dict[str, Callable[[], object]]:
    zc, zc_t, zc_j = ins.zc, ins.zc_t, ins.zc_j
    bound_xla = _jitted()["bound"]

    def bound():
        g = zc.T @ zc
        return zc @ g

    def bound_torch():
        g = zc_t.T @ zc_t
        return zc_t @ g

    return {
        "bound_numpy": bound,
        "bound_xla": lambda: _block(bound_xla(zc_j)),
        "bound_torch": bound_torch,
    }


def _reference_notes(size: Size, op: str) -> list[str]:
    """Where spacelearn's default solver is an approximation at this size, say so.

    The text does not depend on the size, so that the report lists it once.
    """
    if op in ("combined_loss", "isotropy_loss") and size.B * size.D > _REFERENCE_LOWRANK_ABOVE:
        return [
            "spacelearn's default solver ('auto') switches to a rank-6 randomised SVD "
            "(torch.svd_lowrank) for matrices of more than 1e5 elements, here the B x D "
            "residual, so its isotropy term is an approximation; space_jax computes the exact "
            "spectrum (from the D x D projected Gram matrix)"
        ]
    if op == "solve_dims" and size.B * size.field_side**2 > _REFERENCE_LOWRANK_ABOVE:
        return [
            "spacelearn's default solver ('auto') takes rank-6 randomised SVDs of the "
            "(B, H * W) targets here (more than 1e5 elements), so its spectra, and the sizes "
            "it picks from them, are approximations; space_jax computes them exactly"
        ]
    return []


def ops_for(
    p: Problem,
    *,
    bridge: bool = True,
    which: tuple[str, ...] | None = None,
    bounds: bool = True,
    bridge_forward: bool = False,
) -> list[Op]:
    """The operations of one problem.

    Args:
      p: the problem.
      bridge: include the torch bridge (when it imports).
      which: operation names to build (default all).
      bounds: time the bound's products (NumPy, XLA, torch) beside the combined loss.
      bridge_forward: also time the bridge's combined loss forward under ``torch.no_grad()``
        beside its fwd+bwd (on tiny inputs: its fixed cost without autograd).

    Returns:
      A list of :class:`Op`.
    """
    import spacelearn
    import spacelearn.data
    import spacelearn.loss
    import torch

    size = p.size
    ins = _Inputs(p)
    jx = _jitted()
    sb, reason = bridge_status() if bridge else (None, "bridge not requested")
    T, J = ins.t, ins.j
    ref_g, br_g = ins.t_grad["spacelearn"], ins.t_grad.get("bridge")
    ops: list[Op] = []

    def want(name):
        return which is None or name in which

    def add(name, fns, *, notes=(), values=None, memory=False):
        if sb is None:
            fns.pop("bridge", None)
            notes = [*notes, reason]
        ops.append(Op(name, fns, list(notes), values or {}, memory))

    def bridge_no_grad():
        with torch.no_grad():
            return sb.combined_loss(T["Z"], T["W"], T["A"], T["Y"], None)

    # --- the combined loss ---------------------------------------------------------------------
    if want("combined_loss fwd+bwd"):

        def ref_combined():
            with quiet():
                loss = spacelearn.combined_loss(ref_g["Z"], T["W"], T["A"], T["Y"], None)
            return _backward(loss, [ref_g["Z"]])

        def jax_combined():
            return _block(jx["combined_vg"](J["Z"], J["W"], J["A"], J["Y"]))

        def bridge_combined():
            loss = sb.combined_loss(br_g["Z"], T["W"], T["A"], T["Y"], None)
            return _backward(loss, [br_g["Z"]])

        add(
            "combined_loss fwd+bwd",
            {
                "spacelearn": ref_combined,
                "space_jax": jax_combined,
                "bridge": bridge_combined,
                **(_bounds(ins) if bounds else {}),
                **({"bridge_no_grad": bridge_no_grad} if bridge_forward and sb else {}),
            },
            notes=_reference_notes(size, "combined_loss"),
            values={
                "spacelearn": lambda: float(ref_combined().detach()),
                "space_jax": lambda: float(jax_combined()[0]),
                **({"bridge": lambda: float(bridge_combined().detach())} if sb is not None else {}),
            },
            memory=True,
        )

    if want("combined_loss fwd"):

        def ref_forward():
            with torch.no_grad(), quiet():
                return spacelearn.combined_loss(T["Z"], T["W"], T["A"], T["Y"], None)

        add(
            "combined_loss fwd",
            {
                "spacelearn": ref_forward,
                "space_jax": lambda: _block(jx["combined"](J["Z"], J["W"], J["A"], J["Y"])),
                "bridge": bridge_no_grad,
            },
            notes=_reference_notes(size, "combined_loss"),
        )

    # --- each loss alone, forward and backward with respect to Z (W for stability) ------------
    def loss_alone(name, ref_fn, jax_key, bridge_fn, args, grad_leaf="Z"):
        def ref():
            with quiet():
                loss = ref_fn(*args(T, ref_g))
            return _backward(loss, [ref_g[grad_leaf]] if grad_leaf == "Z" else ref_g["W"].values())

        def jax_fn():
            return _block(jx[jax_key](*args(J, J)))

        def bridge():
            loss = bridge_fn(*args(T, br_g))
            return _backward(loss, [br_g[grad_leaf]] if grad_leaf == "Z" else br_g["W"].values())

        add(
            f"{name} fwd+bwd",
            {"spacelearn": ref, "space_jax": jax_fn, "bridge": bridge},
            notes=_reference_notes(size, name),
        )

    sbl = getattr(sb, "loss", None)
    # name, the core's jitted value-and-grad, arguments from (inputs, grad leaves), grad leaf
    single_losses = [
        ("alignment_loss", "alignment_vg", lambda d, g: (g["Z"], d["W"], d["A"], d["Y"]), "Z"),
        ("disentanglement_loss", "disentanglement_vg", lambda d, g: (g["Z"], d["W"]), "Z"),
        ("isotropy_loss", "isotropy_vg", lambda d, g: (g["Z"], d["W"]), "Z"),
        ("stability_loss", "stability_vg", lambda d, g: (g["W"], d["W_prev"]), "W"),
    ]
    for name, jax_key, arguments, leaf in single_losses:
        if want(f"{name} fwd+bwd"):
            loss_alone(
                name,
                getattr(spacelearn.loss, name),
                jax_key,
                getattr(sbl, name, None),
                arguments,
                grad_leaf=leaf,
            )

    # --- solvers, sizing, pooling ------------------------------------------------------------
    if want("solve_subspaces"):

        def ref_solve():
            with quiet():
                return spacelearn.solve_subspaces(T["Z"], T["Y"], k=size.k)

        add(
            "solve_subspaces",
            {
                "spacelearn": ref_solve,
                "space_jax": lambda: _block(jx["solve_subspaces"](J["Z"], J["Y"], k=size.k)),
                "bridge": lambda: sb.solve_subspaces(T["Z"], T["Y"], k=size.k),
            },
        )

    if want("solve_dims"):
        import space_jax as sj

        dims_args = (16, 0.95, 0.90)

        def ref_dims():
            with quiet():
                return spacelearn.solve_dims(T["fields"], *dims_args)

        add(
            "solve_dims",
            {
                "spacelearn": ref_dims,
                "space_jax": lambda: sj.solve_dims(J["fields"], *dims_args),
                "bridge": lambda: sb.solve_dims(T["fields"], *dims_args),
            },
            notes=[
                "host-level (returns Python ints): space_jax runs jitted pieces eagerly",
                *_reference_notes(size, "solve_dims"),
            ],
        )

    if want("pool"):
        q0 = next(iter(p.fields))
        n = size.bins

        add(
            "pool",
            {
                "spacelearn": lambda: spacelearn.data.pool(T["fields"][q0], n, "avg"),
                "space_jax": lambda: _block(jx["pool"](J["fields"][q0], n_bins=n)),
                "bridge": lambda: sb.data.pool(T["fields"][q0], n, "avg"),
            },
            notes=[f"one (B, 1, {size.field_side}, {size.field_side}) field to {n}x{n}, average"],
        )

    return ops


def _xla_memory(p: Problem) -> dict | None:
    """XLA's own account of the jitted combined loss and gradient's buffers, in bytes."""
    import jax

    try:
        J = jax.device_put((p.Z, p.W, p.A, p.Y))
        stats = _jitted()["combined_vg"].lower(*J).compile().memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None
    if stats is None:
        return None
    keys = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
    return {k: int(getattr(stats, k)) for k in keys if hasattr(stats, k)}


def measure(
    size: Size,
    *,
    rounds: int,
    max_seconds: float | None = None,
    min_rounds: int = 3,
    bridge: bool = True,
    which: tuple[str, ...] | None = None,
    memory: bool = True,
    bounds: bool = True,
    bridge_forward: bool = False,
    timing: dict | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> list[dict]:
    """Measures the operations of one size; one row (a dict) per operation.

    A row holds the size, the operation, its notes, the timings of every implementation and,
    for the combined loss, of the bounds (:meth:`benchmarks.harness.Timing.as_dict`; "bound"
    is the per-round fastest of the three), optionally the loss values each implementation
    returned and the peak memory of one call. ``timing`` passes protocol settings
    (``pause_s``, ``block_s``, ``min_calls``) to :func:`benchmarks.harness.time_blocks`.
    """
    p = make_problem(size)
    rows = []
    for op in ops_for(p, bridge=bridge, which=which, bounds=bounds, bridge_forward=bridge_forward):
        gc.collect()
        log(f"  {size.name}: {op.name}")
        timings = time_blocks(
            op.fns,
            rounds=rounds,
            min_rounds=min_rounds,
            max_seconds=max_seconds,
            **(timing or {}),
        )
        times = {name: t.as_dict() for name, t in timings.items()}
        bound = min_over([times[k] for k in BOUNDS if k in times])
        if bound is not None:
            times["bound"] = bound
        row = {
            "size": size.as_dict(),
            "op": op.name,
            "notes": op.notes,
            "method": "one process, steady-state blocks",
            "times": times,
        }
        if op.values:
            row["values"] = {name: fn() for name, fn in op.values.items()}
        if memory and op.memory:
            row["peak_memory_bytes"] = {
                name: peak_rss_increase(fn)
                for name, fn in op.fns.items()
                if name in IMPLEMENTATIONS
            }
            row["xla_memory"] = _xla_memory(p)
            row["input_bytes"] = int(
                p.Z.nbytes + sum(x.nbytes for d in (p.W, p.A, p.Y) for x in d.values())
            )
        rows.append(row)
    return rows
