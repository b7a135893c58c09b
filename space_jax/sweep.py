"""Hyperparameter sweeps: one compiled, ``vmap``-ed training run per chunk of configurations.

A sweep takes a training function ``train_fn(config, *args) -> {metric: value}`` written for one
configuration (``config`` is a dict of scalars) and runs it over a grid. Numeric grid values
(loss weights, learning rates, thresholds, active subspace sizes, seeds) become a leading batch
axis: the configurations of a chunk run as one XLA program, whose small matrix products batch
into larger ones, instead of one program call per configuration. Non-numeric values (a solver
name, an optimizer choice) are static: each combination of them is compiled once and its
numeric configurations are vmapped.

The extra ``args`` (data, initial parameters) are passed to the compiled function as arguments,
shared by all configurations, never closed over (closed-over arrays become constants baked into
the program). Each call of :func:`sweep` compiles its program once (included in
``SweepResult.seconds``).

``vectorize=True`` is safe on every backend: every decomposition and solve the library runs
goes through :mod:`space_jax.linalg`, whose functions stay one LAPACK call per configuration under
``vmap`` on CPU (jaxlib 0.10's batched CPU kernels can deadlock XLA's thread pool) and use the
batched solvers on GPUs. A training function that calls ``jnp.linalg`` itself should call
``space_jax.linalg.eigh``, ``svd``, ``lstsq``, ... instead.

What to expect: vmapping pays when one run is made of many small operations (per-step overhead
dominates): the configurations' small matrix products become one larger product per step. A run
that is already compute-bound gains little on CPU. ``benchmarks/sweep.py`` measures it.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SweepResult", "expand_grid", "sweep"]

logger = logging.getLogger(__name__)

_MODES = ("product", "zip")


def expand_grid(
    grid: Mapping[str, Sequence] | Sequence[Mapping[str, Any]], *, mode: str = "product"
) -> list[dict[str, Any]]:
    """The list of configurations a grid describes.

    Args:
      grid: ``{name: values}``, or an explicit list of configurations (dicts with the same keys).
      mode: ``"product"``: every combination, the last name varying fastest (as
        ``itertools.product``); ``"zip"``: the i-th values together (all of the same length).

    Returns:
      A list of ``{name: value}`` dicts.
    """
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    if isinstance(grid, Mapping):
        if len(grid) == 0:
            raise ValueError("grid: expected at least one hyperparameter, got an empty dict")
        names = list(grid)
        values = []
        for name in names:
            v = grid[name]
            if isinstance(v, str | bytes) or not isinstance(v, Sequence | np.ndarray | jax.Array):
                raise TypeError(
                    f"grid[{name!r}]: expected a sequence of values, got {type(v).__name__}"
                )
            if len(v) == 0:
                raise ValueError(f"grid[{name!r}]: expected at least one value, got none")
            values.append(list(v))
        if mode == "zip":
            lengths = {name: len(v) for name, v in zip(names, values, strict=True)}
            if len(set(lengths.values())) != 1:
                raise ValueError(f"grid: mode='zip' needs equal lengths, got {lengths}")
            combos = zip(*values, strict=True)
        else:
            combos = itertools.product(*values)
        return [dict(zip(names, combo, strict=True)) for combo in combos]
    configs = [dict(c) if isinstance(c, Mapping) else c for c in grid]
    if not configs:
        raise ValueError("grid: expected at least one configuration, got none")
    for i, c in enumerate(configs):
        if not isinstance(c, dict):
            raise TypeError(f"grid[{i}]: expected a dict of hyperparameters, got {type(c)}")
        if set(c) != set(configs[0]):
            raise ValueError(
                f"grid[{i}]: keys {sorted(c)} differ from the first configuration's "
                f"{sorted(configs[0])}"
            )
    return configs


def _is_numeric(value: Any) -> bool:
    if isinstance(value, jax.Array):
        return True
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        return False
    return arr.dtype.kind in "biuf"


class SweepResult:
    """The results of a sweep, one row per configuration in grid order.

    Attributes:
      columns: ``{name: numpy array (n, ...)}`` for numeric hyperparameters and metrics, a list
        for static (non-numeric) hyperparameters.
      config_names: the hyperparameter columns; ``metric_names``: the metric columns.
      seconds: wall time of the sweep, compilation included.
    """

    def __init__(
        self,
        columns: dict[str, Any],
        config_names: list[str],
        metric_names: list[str],
        seconds: float = float("nan"),
    ):
        self.columns = columns
        self.config_names = list(config_names)
        self.metric_names = list(metric_names)
        self.seconds = seconds

    def __len__(self) -> int:
        first = self.columns[self.config_names[0]]
        return len(first)

    def __getitem__(self, name: str):
        return self.columns[name]

    def __repr__(self) -> str:
        return (
            f"SweepResult({len(self)} configurations, hyperparameters {self.config_names}, "
            f"metrics {self.metric_names})"
        )

    def rows(self) -> list[dict[str, Any]]:
        """One ``{column: value}`` dict per configuration (NumPy scalars become Python)."""
        names = self.config_names + self.metric_names
        return [{n: _plain(self.columns[n][i]) for n in names} for i in range(len(self))]

    def to_dict(self) -> dict[str, list]:
        """``{column: list}``, JSON-serialisable."""
        return {n: [_plain(v) for v in self.columns[n]] for n in self.columns}

    def best(self, metric: str, *, maximize: bool = False) -> dict[str, Any]:
        """The row with the smallest (or largest) scalar ``metric``; NaN rows never win."""
        if metric not in self.metric_names:
            raise KeyError(f"metric: no column {metric!r}; metrics are {self.metric_names}")
        values = np.asarray(self.columns[metric], np.float64)
        if values.ndim != 1:
            raise ValueError(f"metric: {metric!r} is not a scalar per configuration")
        if np.all(np.isnan(values)):
            raise ValueError(f"metric: {metric!r} is NaN for every configuration")
        index = int(np.nanargmax(values) if maximize else np.nanargmin(values))
        return self.rows()[index]

    def to_markdown(self, *, floatfmt: str = ".4g", columns: Sequence[str] | None = None) -> str:
        """A Markdown table; non-scalar entries are shown by their shape."""
        names = list(columns) if columns is not None else self.config_names + self.metric_names
        unknown = [n for n in names if n not in self.columns]
        if unknown:
            raise KeyError(f"columns: unknown {unknown}; available {list(self.columns)}")
        lines = [
            "| " + " | ".join(names) + " |",
            "| " + " | ".join("---" for _ in names) + " |",
        ]
        for i in range(len(self)):
            cells = [_cell(self.columns[n][i], floatfmt) for n in names]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _cell(value: Any, floatfmt: str) -> str:
    value = _plain(value)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return format(value, floatfmt)
    if isinstance(value, list):
        return f"array{tuple(np.shape(value))}"
    return str(value)


def _stack(configs: list[dict], names: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        values = [np.asarray(c[name]) for c in configs]
        shapes = {v.shape for v in values}
        if len(shapes) != 1:
            raise ValueError(f"grid[{name!r}]: values have different shapes {sorted(shapes)}")
        arr = np.stack(values)
        # Python floats and ints follow JAX's default precision (float32/int32 unless x64).
        out[name] = np.asarray(jnp.asarray(arr))
    return out


def _outputs(out: Any) -> dict[str, Any]:
    if isinstance(out, Mapping):
        return dict(out)
    return {"result": out}


def sweep(
    train_fn: Callable[..., Any],
    grid: Mapping[str, Sequence] | Sequence[Mapping[str, Any]],
    *args: Any,
    chunk_size: int | None = None,
    mode: str = "product",
    vectorize: bool = True,
) -> SweepResult:
    """Runs ``train_fn`` for every configuration of a grid, ``vmap``-ed in chunks.

    Example::

        def train(config, data):  # one configuration; config values are scalars
            params = init(jax.random.key(config["seed"]))
            ...  # optax with config["lr"], space_jax losses with config["w_align"]
            return {"loss": final_loss, "r2": r2}

        result = sweep(train, {"lr": [1e-3, 3e-3], "w_align": [0.1, 1.0], "seed": [0, 1]}, data)
        table = result.to_markdown()

    Args:
      train_fn: ``train_fn(config, *args)``, pure and traceable, returning a dict of arrays
        (one column each) or one array (column ``"result"``).
      grid: ``{name: values}`` or a list of configurations, see :func:`expand_grid`. Numbers,
        booleans and arrays are batched; other values (strings, None, callables) are static.
      *args: shared arguments of ``train_fn`` (data, initial parameters), passed unbatched.
      chunk_size: configurations per compiled call, to bound memory (default all at once).
        The last chunk is padded by repeating its last configuration, so every chunk reuses
        one compilation; padded results are dropped.
      mode: ``"product"`` or ``"zip"`` for a dict ``grid``.
      vectorize: ``True`` (default, safe on every backend) vmaps; ``False`` runs the
        configurations one after another through a jitted single-configuration function (the
        reference for checking a sweep).

    Returns:
      A :class:`SweepResult`.
    """
    if not callable(train_fn):
        raise TypeError(f"train_fn: expected a callable, got {type(train_fn)}")
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size: expected an int >= 1 or None, got {chunk_size!r}")
    configs = expand_grid(grid, mode=mode)
    names = list(configs[0])
    numeric = [n for n in names if all(_is_numeric(c[n]) for c in configs)]
    static = [n for n in names if n not in numeric]
    start = time.perf_counter()

    # Group by the static part, keeping each configuration's position in the grid.
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        key = tuple((n, _static_key(c[n])) for n in static)
        groups.setdefault(key, []).append(i)

    results: list[dict[str, np.ndarray] | None] = [None] * len(configs)
    for indices in groups.values():
        static_values = {n: configs[indices[0]][n] for n in static}
        batch = _stack([configs[i] for i in indices], numeric)
        outputs = _run_group(train_fn, static_values, batch, args, chunk_size, vectorize)
        for j, i in enumerate(indices):
            results[i] = {name: col[j] for name, col in outputs.items()}

    metric_names = list(results[0])
    for i, r in enumerate(results):
        if list(r) != metric_names:
            raise ValueError(
                f"train_fn: configuration {i} returned metrics {list(r)}, the first returned "
                f"{metric_names}"
            )
    columns: dict[str, Any] = {}
    for n in names:
        if n in numeric:
            # The values as given (float64 for Python floats), not as computed in float32.
            columns[n] = np.stack([np.asarray(c[n]) for c in configs])
        else:
            columns[n] = [c[n] for c in configs]
    for m in metric_names:
        if m in columns:
            raise ValueError(f"train_fn: metric {m!r} has the name of a hyperparameter")
        columns[m] = np.stack([r[m] for r in results])
    seconds = time.perf_counter() - start
    logger.info("sweep: %d configurations in %.2f s", len(configs), seconds)
    return SweepResult(columns, names, metric_names, seconds)


def _static_key(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return id(value)
    return value


def _run_group(
    train_fn: Callable,
    static_values: dict[str, Any],
    batch: dict[str, np.ndarray],
    args: tuple,
    chunk_size: int | None,
    vectorize: bool,
) -> dict[str, np.ndarray]:
    n = len(next(iter(batch.values()))) if batch else 1

    order: list[str] = []

    def one(numeric_config, *shared):
        out = _outputs(train_fn({**numeric_config, **static_values}, *shared))
        order[:] = list(out)  # jit returns dicts with sorted keys; keep the user's order
        return out

    if not vectorize or not batch:
        single = jax.jit(one)
        rows = []
        for i in range(n):
            out = single({k: v[i] for k, v in batch.items()}, *args)
            rows.append(jax.tree_util.tree_map(np.asarray, out))
        return {m: np.stack([r[m] for r in rows]) for m in order}

    size = n if chunk_size is None else min(chunk_size, n)
    batched = jax.jit(jax.vmap(one, in_axes=(0,) + (None,) * len(args)))
    chunks = []
    for lo in range(0, n, size):
        hi = min(lo + size, n)
        # Pad the last chunk with copies of its last configuration: one shape, one compilation.
        index = np.minimum(np.arange(lo, lo + size), hi - 1)
        out = batched({k: v[index] for k, v in batch.items()}, *args)
        chunks.append({m: np.asarray(v)[: hi - lo] for m, v in out.items()})
        logger.debug("sweep: chunk %d/%d done", lo // size + 1, math.ceil(n / size))
    return {m: np.concatenate([c[m] for c in chunks]) for m in order}
