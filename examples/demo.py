"""SPACE on heat-equation fields: does the latent space decode the physics better?

The pipeline of spacelearn's README, in JAX and Flax NNX:

1. Data made here: solutions of the heat equation ``u_t = nu * (u_xx + u_yy)`` on a periodic
   grid, from random Gaussian-blob initial conditions, observed at random times. Per sample,
   four quantities: the field, its gradient magnitude, its Laplacian and its energy density
   ``u**2 / 2``, pooled with ``input_to_quantity``. Splits: training (its last ``n_val``
   fields are the validation split of step 3) and a held-out test split.
2. ``solve_dims`` picks the pooling grid and the subspace size of each quantity,
   ``minimal_latent_dim`` the latent size.
3. Model selection: an MLP autoencoder (Flax NNX) trained on reconstruction plus the SPACE
   loss, for every configuration of a grid over the four loss weights, as ONE vmapped program
   (``space_jax.sweep``); each is scored by the held-out R^2 of decoding every quantity linearly
   from its k-dimensional subspace, on the validation split.
4. The selected configuration and the baseline (the same model, initialisation and batches
   without the SPACE loss) are retrained on the whole training split, the subspaces refreshed
   every few epochs by ``space_jax.nnx.SpaceRegularizer``, and compared on the test split.

Writes ``artifacts/demo/metrics.json``, then plots, under ``artifacts/demo/``. Run with
``python examples/demo.py`` (``make demo``); ``--quick`` runs a tiny version in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import space_jax as sj
from space_jax.nnx import SpaceRegularizer

QUANTITIES = ("field", "grad_mag", "laplacian", "energy")
OPTIONAL = {"tqdm": "progress bars", "matplotlib": "the plots"}


def require_optional(*, plots: bool = True) -> None:
    """Stops with a clear message, before any work, when an optional dependency is missing."""
    needed = [n for n in OPTIONAL if plots or n != "matplotlib"]
    missing = [n for n in needed if importlib.util.find_spec(n) is None]
    if missing:
        what = ", ".join(f"{n} ({OPTIONAL[n]})" for n in missing)
        raise SystemExit(
            f"examples/demo.py needs {what}: pip install 'space-jax[demo]' "
            f"(or pip install {' '.join(missing)})"
            + (
                "; or run with --no-plots"
                if plots and "matplotlib" in missing and len(missing) == 1
                else ""
            )
        )


WEIGHT_NAMES = sj.LossWeights._fields  # alignment, disentanglement, isotropy, stability


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes and hyperparameters; ``Config.quick()`` is the smoke-test version."""

    grid: int = 32  # field side (grid x grid periodic domain)
    n_train: int = 3072
    n_test: int = 1024
    n_ref: int = 512  # reference samples for solve_dims and the subspace refreshes
    epochs: int = 40
    batch: int = 128
    lr: float = 1e-3
    hidden: int = 256
    refresh_every: int = 4  # epochs between subspace refreshes
    max_bins: int = 8
    bin_threshold: float = 0.80
    k_threshold: float = 0.80
    free_frac: float = 0.30
    n_val: int = 512  # the last n_val training fields: the model selection's validation split
    # The model selection's grid: the four SPACE weights and the learning rate (stability has no
    # gradient here: W is refitted, not learned, so one value).
    grid_values: tuple = (
        ("alignment", (0.1, 0.3, 1.0, 3.0)),
        ("disentanglement", (0.0, 0.03)),
        ("isotropy", (0.0, 0.03)),
        ("stability", (1.0,)),
        ("lr", (1e-3,)),
    )
    sweep_epochs: int = 12
    seed: int = 0

    @classmethod
    def quick(cls) -> Config:
        return cls(
            grid=16,
            n_train=256,
            n_test=128,
            n_ref=128,
            epochs=4,
            batch=64,
            hidden=64,
            refresh_every=2,
            max_bins=4,
            n_val=64,
            grid_values=(
                ("alignment", (0.3, 1.0)),
                ("disentanglement", (0.0,)),
                ("isotropy", (0.0, 0.1)),
                ("stability", (1.0,)),
                ("lr", (1e-3,)),
            ),
            sweep_epochs=2,
        )


# --- data --------------------------------------------------------------------------------------


def heat_fields(n: int, grid: int, rng: np.random.Generator, max_blobs: int = 5) -> np.ndarray:
    """Heat-equation solutions ``(n, 1, grid, grid)`` from random Gaussian-blob initial data.

    Each initial condition is a sum of 2 to ``max_blobs`` periodic Gaussian blobs of random
    sign, amplitude, width and position; it is evolved exactly in Fourier space
    (``exp(-nu |k|^2 t)``) to a random time.
    """
    x = np.arange(grid) / grid
    count = rng.integers(2, max_blobs + 1, size=(n, 1))
    present = np.arange(max_blobs)[None, :] < count  # (n, blobs)
    centers = rng.uniform(0, 1, size=(n, max_blobs, 2))
    width = rng.uniform(0.08, 0.15, size=(n, max_blobs, 1))
    amplitude = rng.choice([-1.0, 1.0], size=(n, max_blobs)) * rng.uniform(0.5, 1.5, (n, max_blobs))
    dx = (x[None, None, :] - centers[..., :1] + 0.5) % 1.0 - 0.5  # periodic distance
    dy = (x[None, None, :] - centers[..., 1:] + 0.5) % 1.0 - 0.5
    gx, gy = np.exp(-(dx**2) / (2 * width**2)), np.exp(-(dy**2) / (2 * width**2))
    u0 = np.einsum("nb,nbi,nbj->nij", amplitude * present, gx, gy)
    k = 2 * np.pi * np.fft.fftfreq(grid, d=1.0 / grid)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    t = rng.uniform(0.0, 2e-3, size=(n, 1, 1))  # nu * t
    u = np.real(np.fft.ifft2(np.fft.fft2(u0) * np.exp(-k2[None] * t)))
    return u[:, None].astype(np.float32)


def _gradient(u: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = 1.0 / u.shape[-1]
    gx = (jnp.roll(u, -1, axis=-2) - jnp.roll(u, 1, axis=-2)) / (2 * h)
    gy = (jnp.roll(u, -1, axis=-1) - jnp.roll(u, 1, axis=-1)) / (2 * h)
    return gx, gy


def field(u: jax.Array) -> jax.Array:
    return u


def grad_mag(u: jax.Array) -> jax.Array:
    gx, gy = _gradient(u)
    return jnp.sqrt(gx**2 + gy**2)


def laplacian(u: jax.Array) -> jax.Array:
    h = 1.0 / u.shape[-1]
    shifted = sum(jnp.roll(u, s, axis=a) for s in (-1, 1) for a in (-2, -1))
    return (shifted - 4 * u) / h**2


def energy(u: jax.Array) -> jax.Array:
    return 0.5 * u**2


# --- model -------------------------------------------------------------------------------------


class AutoEncoder(nnx.Module):
    """MLP autoencoder of flattened fields; the SPACE state rides along as ``self.space``."""

    def __init__(self, n_in: int, hidden: int, latent_dim: int, space: SpaceRegularizer, *, rngs):
        self.enc1 = nnx.Linear(n_in, hidden, rngs=rngs)
        self.enc2 = nnx.Linear(hidden, hidden // 2, rngs=rngs)
        self.enc3 = nnx.Linear(hidden // 2, latent_dim, rngs=rngs)
        self.dec1 = nnx.Linear(latent_dim, hidden // 2, rngs=rngs)
        self.dec2 = nnx.Linear(hidden // 2, hidden, rngs=rngs)
        self.dec3 = nnx.Linear(hidden, n_in, rngs=rngs)
        self.space = space

    def encode(self, x: jax.Array) -> jax.Array:
        h = nnx.gelu(self.enc1(x.reshape(x.shape[0], -1)))
        return self.enc3(nnx.gelu(self.enc2(h)))

    def decode(self, z: jax.Array) -> jax.Array:
        return self.dec3(nnx.gelu(self.dec2(nnx.gelu(self.dec1(z)))))


def _losses(model: AutoEncoder, x, y, weights: sj.LossWeights):
    z = model.encode(x)
    task = jnp.mean((model.decode(z) - x.reshape(x.shape[0], -1)) ** 2)
    space, terms = model.space.loss_and_terms(z, y, weights=weights)
    return task + space, (task, terms)


@nnx.jit
def refresh(model, x_ref, y_ref):
    """Refits the subspaces; returns two drift measures per quantity (degrees).

    ``direction``: spacelearn's ``subspace_change`` (each old basis vector against its closest
    new one), which also counts rotations *within* an unchanged subspace; ``span``: the mean
    principal angle between the old and the new subspaces, which does not.
    """
    old = model.space.current().W
    direction = model.space.refresh(model.encode(x_ref), y_ref)
    new = model.space.current().W
    span = {q: _mean_principal_angle(old[q], new[q]) for q in new}
    return {"direction": direction, "span": span}


def _mean_principal_angle(w_old: jax.Array, w_new: jax.Array) -> jax.Array:
    cosines = jnp.clip(sj.linalg.svd(w_old @ w_new.T, compute_uv=False), 0.0, 1.0)
    return jnp.degrees(jnp.arccos(cosines)).mean()


@nnx.jit
def encode(model, x):
    return model.encode(x)


# --- evaluation --------------------------------------------------------------------------------


def _r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Variance-weighted R^2 over all outputs of a quantity."""
    y_true, y_pred = y_true.reshape(len(y_true), -1), y_pred.reshape(len(y_pred), -1)
    sse = np.sum((y_true - y_pred) ** 2)
    sst = np.sum((y_true - y_true.mean(axis=0)) ** 2)
    return float(1.0 - sse / sst)


def evaluate(model, data: dict, k: dict) -> dict:
    """Held-out metrics with subspaces and decoders fitted on the training split."""
    z_train = np.asarray(encode(model, data["x_train"]), np.float64)
    z_test = np.asarray(encode(model, data["x_test"]), np.float64)
    y_train = {q: np.asarray(v, np.float64) for q, v in data["y_train"].items()}
    y_test = {q: np.asarray(v, np.float64) for q, v in data["y_test"].items()}
    with jax.enable_x64(True):
        space = sj.solve_subspaces(jnp.asarray(z_train), y_train, k=k)
        W = {q: np.asarray(w) for q, w in space.W.items()}
        A = {q: np.asarray(a) for q, a in space.A.items()}
        z_mean = z_train.mean(axis=0)
        decode_r2 = {}
        for q in QUANTITIES:
            y_mean = y_train[q].reshape(len(z_train), -1).mean(axis=0)
            pred = (z_test - z_mean) @ W[q].T @ A[q] + y_mean
            decode_r2[q] = _r2(y_test[q], pred)
        zt = jnp.asarray(z_test)
        terms = {
            "alignment": float(sj.alignment_loss(zt, W, A, y_test)),
            "disentanglement": float(sj.disentanglement_loss(zt, W)),
            "isotropy": float(sj.isotropy_loss(zt, W)),
        }
    x_test = data["x_test"]
    recon = np.asarray(model.decode(encode(model, x_test)))
    flat = np.asarray(x_test).reshape(len(x_test), -1)
    return {
        "decode_r2": decode_r2,
        "mean_decode_r2": float(np.mean(list(decode_r2.values()))),
        **terms,
        "reconstruction_mse": float(np.mean((recon - flat) ** 2)),
        "reconstruction_r2": _r2(flat, recon),
    }


# --- training ----------------------------------------------------------------------------------


def make_data(cfg: Config) -> tuple[dict, dict]:
    """Fields, pooled and standardised quantities, and the sizes from ``solve_dims``.

    Three splits: ``train`` (``n_train`` fields), whose last ``n_val`` form the validation
    split of the model selection (``fit`` is the rest), and ``test`` (``n_test`` fields),
    used only for the final comparison.
    """
    if not 0 < cfg.n_val < cfg.n_train:
        raise ValueError(f"n_val: expected 0 < n_val < n_train = {cfg.n_train}, got {cfg.n_val}")
    rng = np.random.default_rng(cfg.seed)
    u = heat_fields(cfg.n_train + cfg.n_test, cfg.grid, rng)
    u = u / u[: cfg.n_train].std()
    u_train, u_test = jnp.asarray(u[: cfg.n_train]), jnp.asarray(u[cfg.n_train :])

    # Step 1-2: sizes from reference samples, as spacelearn's README.
    raw = sj.compute_Q(field, grad_mag, laplacian, energy)
    ref = raw(u=u_train[: cfg.n_ref])
    dims = sj.solve_dims(ref, cfg.max_bins, cfg.bin_threshold, cfg.k_threshold, k_per_quantity=True)
    n_bins = next(iter(dims.values()))[0]
    k = {q: kq for q, (_, kq) in dims.items()}
    latent_dim = sj.minimal_latent_dim(k, free_frac=cfg.free_frac)

    # Step 3: the quantity helper; each quantity scaled to unit variance on the training split
    # so that the alignment term weighs the quantities alike (R^2 is scale-free).
    pooled = sj.input_to_quantity(n_bins, "avg", field, grad_mag, laplacian, energy)
    y_train, y_test = pooled(u=u_train), pooled(u=u_test)
    scale = {q: float(jnp.std(y_train[q] - y_train[q].mean(axis=0))) for q in QUANTITIES}
    y_train = {q: y_train[q] / scale[q] for q in QUANTITIES}
    y_test = {q: y_test[q] / scale[q] for q in QUANTITIES}
    n_fit = cfg.n_train - cfg.n_val
    data = {
        "x_train": u_train,
        "x_test": u_test,
        "y_train": y_train,
        "y_test": y_test,
        "x_fit": u_train[:n_fit],
        "y_fit": {q: v[:n_fit] for q, v in y_train.items()},
        "x_val": u_train[n_fit:],
        "y_val": {q: v[n_fit:] for q, v in y_train.items()},
    }
    sizes = {"n_bins": n_bins, "k": k, "latent_dim": latent_dim, "dims": dims}
    return data, sizes


def build_model(cfg: Config, sizes: dict, data: dict, seed) -> AutoEncoder:
    shapes = {q: tuple(v.shape[1:]) for q, v in data["y_train"].items()}
    space = SpaceRegularizer(sizes["latent_dim"], shapes, k=sizes["k"])
    return AutoEncoder(
        cfg.grid**2, cfg.hidden, sizes["latent_dim"], space, rngs=nnx.Rngs(jax.random.key(seed))
    )


def _weights(config) -> sj.LossWeights:
    return sj.LossWeights(*(config[w] for w in WEIGHT_NAMES))


def _epoch_batches(cfg: Config, n: int, epoch) -> jax.Array:
    """``(n // batch, batch)`` sample indices of one epoch: the same for every model."""
    perm = jax.random.permutation(jax.random.fold_in(jax.random.key(cfg.seed + 1), epoch), n)
    n_batches = n // cfg.batch
    return perm[: n_batches * cfg.batch].reshape(n_batches, cfg.batch)


def _train_epoch(graphdef, state, x, y, batches, weights):
    """One epoch of Adam steps as a ``lax.scan`` (functional NNX); per-step losses."""

    def step(state, idx):
        model, optimizer = nnx.merge(graphdef, state)
        yb = {q: v[idx] for q, v in y.items()}
        grads_fn = nnx.grad(_losses, has_aux=True)
        grads, (task, terms) = grads_fn(model, x[idx], yb, weights)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), (task, terms)

    return jax.lax.scan(step, state, batches)


@nnx.jit
def train_epoch(model, optimizer, x, y, batches, weights):
    """One epoch (``batches``: ``(n_batches, batch)`` indices), compiled once; mean losses."""
    graphdef, state = nnx.split((model, optimizer))
    state, (task, terms) = _train_epoch(graphdef, state, x, y, batches, weights)
    nnx.update((model, optimizer), state)
    return task.mean(), {t: v.mean() for t, v in terms.items()}


def train(cfg: Config, sizes: dict, data: dict, *, config: dict, label: str) -> dict:
    """Trains one model on the whole training split; returns it with per-epoch curves and
    per-refresh drift. ``config``: the four loss weights and ``lr``."""
    model = build_model(cfg, sizes, data, cfg.seed)
    optimizer = nnx.Optimizer(model, optax.adam(config["lr"]), wrt=nnx.Param)
    x_ref = data["x_train"][: cfg.n_ref]
    y_ref = {q: v[: cfg.n_ref] for q, v in data["y_train"].items()}
    weights = sj.LossWeights(*(jnp.asarray(config[w], jnp.float32) for w in WEIGHT_NAMES))
    history = {t: [] for t in ("task", "alignment", "disentanglement", "isotropy")}
    history.update(drift=[], span_drift=[])
    from tqdm.auto import tqdm

    bar = tqdm(range(cfg.epochs), desc=f"{label:>8}", unit="epoch", leave=True)
    for epoch in bar:
        if epoch % cfg.refresh_every == 0:
            drift = refresh(model, x_ref, y_ref)
            if epoch > 0:
                history["drift"].append({q: float(d) for q, d in drift["direction"].items()})
                history["span_drift"].append({q: float(d) for q, d in drift["span"].items()})
        batches = _epoch_batches(cfg, cfg.n_train, epoch)
        task, terms = train_epoch(
            model, optimizer, data["x_train"], data["y_train"], batches, weights
        )
        history["task"].append(float(task))
        for t in ("alignment", "disentanglement", "isotropy"):
            history[t].append(float(terms[t]))
        bar.set_postfix(task=f"{history['task'][-1]:.4f}", align=f"{history['alignment'][-1]:.3f}")
    return {"model": model, "history": history}


def _r2_traced(y_true: jax.Array, y_pred: jax.Array) -> jax.Array:
    y_true = y_true.reshape(y_true.shape[0], -1)
    sst = jnp.sum((y_true - y_true.mean(axis=0)) ** 2)
    return 1.0 - jnp.sum((y_true - y_pred) ** 2) / sst


def make_sweep_train(cfg: Config, sizes: dict, data: dict):
    """A pure training function of one configuration, for ``sj.sweep`` (functional NNX).

    The loop of :func:`train` (refreshes, Adam steps) runs inside ``lax.scan`` for
    ``sweep_epochs`` epochs on the ``fit`` split; the result is each quantity's decode R^2 on
    the validation split, with subspaces and decoders fitted on the ``fit`` split. ``config``
    holds traced scalars: the four loss weights and ``lr``.
    """
    shapes = {q: tuple(v.shape[1:]) for q, v in data["y_train"].items()}
    k, latent_dim = sizes["k"], sizes["latent_dim"]
    periods = -(-cfg.sweep_epochs // cfg.refresh_every)

    def train_fn(config, x, y, x_ref, y_ref, x_val, y_val):
        space = SpaceRegularizer(latent_dim, shapes, k=k)
        rngs = nnx.Rngs(jax.random.key(cfg.seed))
        model = AutoEncoder(cfg.grid**2, cfg.hidden, latent_dim, space, rngs=rngs)
        optimizer = nnx.Optimizer(model, optax.adam(config["lr"]), wrt=nnx.Param)
        graphdef, state = nnx.split((model, optimizer))
        weights = _weights(config)

        def epoch(state, e):
            batches = _epoch_batches(cfg, x.shape[0], e)
            return _train_epoch(graphdef, state, x, y, batches, weights)[0], None

        def period(state, p):
            model, optimizer = nnx.merge(graphdef, state)
            model.space.refresh(model.encode(x_ref), y_ref)
            epochs = p * cfg.refresh_every + jnp.arange(cfg.refresh_every)
            return jax.lax.scan(epoch, nnx.state((model, optimizer)), epochs)[0], None

        state, _ = jax.lax.scan(period, state, jnp.arange(periods))
        model, _ = nnx.merge(graphdef, state)
        z_fit, z_val = model.encode(x), model.encode(x_val)
        fitted = sj.solve_subspaces(z_fit, y, k=k)
        z_mean = z_fit.mean(axis=0)
        out = {}
        for q in QUANTITIES:
            y_mean = y[q].reshape(x.shape[0], -1).mean(axis=0)
            pred = (z_val - z_mean) @ fitted.W[q].T @ fitted.A[q] + y_mean
            out[f"val_r2_{q}"] = _r2_traced(y_val[q], pred)
        out["val_mean_r2"] = jnp.mean(jnp.stack([out[f"val_r2_{q}"] for q in QUANTITIES]))
        recon = model.decode(z_val)
        out["val_reconstruction_mse"] = jnp.mean((recon - x_val.reshape(len(x_val), -1)) ** 2)
        return out

    return train_fn


def grid_configs(cfg: Config) -> list[dict]:
    """The configurations of the model selection: the product grid, then the baseline (every
    SPACE weight 0, the first learning rate)."""
    grid = {name: list(values) for name, values in cfg.grid_values}
    configs = sj.expand_grid(grid)
    baseline = {**dict.fromkeys(WEIGHT_NAMES, 0.0), "lr": grid["lr"][0]}
    return [*configs, baseline]


def select(result: sj.SweepResult) -> tuple[int, str]:
    """Index of the selected configuration and why, from validation scores only.

    The rule: among configurations that decode every quantity at least as well as the baseline
    (the last row) on the validation split, the best mean validation R^2; if none does, the
    best mean.
    """
    rows = result.rows()
    baseline = rows[-1]
    candidates = [
        i
        for i, r in enumerate(rows[:-1])
        if all(r[f"val_r2_{q}"] >= baseline[f"val_r2_{q}"] for q in QUANTITIES)
    ]
    pool = candidates if candidates else list(range(len(rows) - 1))
    best = max(pool, key=lambda i: rows[i]["val_mean_r2"])
    why = (
        f"best validation mean R² among the {len(candidates)} configurations that match or "
        "beat the baseline on every quantity"
        if candidates
        else "no configuration matched the baseline on every quantity: best validation mean R²"
    )
    return best, why


def model_selection(cfg: Config, sizes: dict, data: dict) -> sj.SweepResult:
    """The grid, vmapped (``sj.sweep``): trained on the ``fit`` split, scored on ``val``."""
    x_ref = data["x_fit"][: cfg.n_ref]
    y_ref = {q: v[: cfg.n_ref] for q, v in data["y_fit"].items()}
    args = (data["x_fit"], data["y_fit"], x_ref, y_ref, data["x_val"], data["y_val"])
    return sj.sweep(make_sweep_train(cfg, sizes, data), grid_configs(cfg), *args)


# --- report ------------------------------------------------------------------------------------


def plot_all(out_dir: Path, histories: dict, metrics: dict, sweep_result, cfg: Config) -> list:
    """Loss curves, decode R^2 per quantity, subspace drift, and the sweep; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"space": ("tab:blue", "-"), "baseline": ("tab:orange", "--")}
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, h in histories.items():
        color, ls = styles[label]
        epochs = np.arange(1, len(h["task"]) + 1)
        axes[0].plot(epochs, h["task"], ls, color=color, label=label)
        for term, marker in (("alignment", "o"), ("disentanglement", "s"), ("isotropy", "^")):
            axes[1].plot(
                epochs,
                h[term],
                ls,
                color=color,
                marker=marker,
                markevery=4,
                ms=4,
                label=f"{term} ({label})",
            )
    axes[0].set(xlabel="epoch", ylabel="reconstruction MSE (train)", yscale="log")
    axes[0].set_title("task loss")
    axes[1].set(xlabel="epoch", ylabel="SPACE term (train, unweighted)")
    axes[1].set_title("SPACE terms (baseline: measured, not trained)")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "loss_curves.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = np.arange(len(QUANTITIES))
    for i, label in enumerate(("space", "baseline")):
        r2 = [metrics[label]["decode_r2"][q] for q in QUANTITIES]
        bars = ax.bar(xs + (i - 0.5) * 0.38, r2, 0.38, color=styles[label][0], label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    k = metrics["config"]["k"]
    ax.set_xticks(xs, [f"{q}\n(k={k[q]})" for q in QUANTITIES])
    ax.set(ylabel="held-out R$^2$", ylim=(min(0.0, ax.get_ylim()[0]), 1.05))
    ax.set_title("linear decoding of each quantity from its k-dim subspace")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "decode_r2.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)
    colors = dict(zip(QUANTITIES, ("tab:blue", "tab:green", "tab:red", "tab:purple"), strict=True))
    panels = (
        ("drift", "per basis vector (subspace_change)"),
        ("span_drift", "per subspace (mean principal angle)"),
    )
    for ax, (key, title) in zip(axes, panels, strict=True):
        for label, h in histories.items():
            at = cfg.refresh_every * np.arange(1, len(h[key]) + 1)
            for q in QUANTITIES:
                ax.plot(
                    at,
                    [d[q] for d in h[key]],
                    styles[label][1],
                    color=colors[q],
                    marker="o",
                    ms=3,
                    label=f"{q} ({label})",
                )
        ax.set(xlabel="epoch of refresh", title=f"drift since the previous refresh\n{title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("angle to the previous basis (deg)")
    axes[1].legend(
        fontsize=7,
        title="solid: SPACE\ndashed: baseline",
        title_fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    fig.tight_layout()
    paths.append(out_dir / "subspace_drift.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    if sweep_result is not None:
        paths.append(out_dir / "sweep.png")
        plot_grid(paths[-1], sweep_result, metrics)
    return paths


def plot_grid(path: Path, result: sj.SweepResult, metrics: dict) -> None:
    """The model selection: validation mean R^2 of every configuration of the grid, and its
    margin over the baseline on the worst quantity (> 0: better on every quantity)."""
    import matplotlib.pyplot as plt

    rows = result.rows()[:-1]  # the last row is the baseline
    baseline = result.rows()[-1]
    names = [n for n in result.config_names if len({r[n] for r in rows}) > 1]
    row_name, col_names = names[0], names[1:]
    row_values = sorted({r[row_name] for r in rows})
    col_values = sorted({tuple(r[n] for n in col_names) for r in rows})
    short = {"alignment": "a", "disentanglement": "d", "isotropy": "i", "stability": "s"}
    col_labels = [
        "\n".join(f"{short.get(n, n)}={v:g}" for n, v in zip(col_names, c, strict=True))
        for c in col_values
    ]
    mean = np.full((len(row_values), len(col_values)), np.nan)
    margin = np.full_like(mean, np.nan)
    for r in rows:
        i = row_values.index(r[row_name])
        j = col_values.index(tuple(r[n] for n in col_names))
        mean[i, j] = r["val_mean_r2"]
        margin[i, j] = min(r[f"val_r2_{q}"] - baseline[f"val_r2_{q}"] for q in QUANTITIES)
    chosen = metrics["selection"]["config"]
    ci = row_values.index(chosen[row_name])
    cj = col_values.index(tuple(chosen[n] for n in col_names))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    panels = (
        (mean, "validation mean decode R$^2$", "viridis", None),
        (margin, "worst-quantity margin over the baseline (validation R$^2$)", "RdBu", 0.0),
    )
    for ax, (values, title, cmap, center) in zip(axes, panels, strict=True):
        if center is None:
            image = ax.imshow(values, cmap=cmap, aspect="auto")
        else:
            lim = max(np.nanmax(np.abs(values)), 1e-3)
            image = ax.imshow(values, cmap=cmap, aspect="auto", vmin=-lim, vmax=lim)
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7)
        ax.add_patch(plt.Rectangle((cj - 0.5, ci - 0.5), 1, 1, fill=False, lw=2.5, ec="red"))
        ax.set_xticks(range(len(col_values)), col_labels, fontsize=7)
        ax.set_yticks(range(len(row_values)), [f"{v:g}" for v in row_values])
        ax.set_ylabel(f"{row_name} weight")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    sweep = metrics["sweep"]
    fig.suptitle(
        f"model selection: {sweep['n_configs']} configurations "
        f"({'vmapped' if sweep['vectorized'] else 'one after another'}, {sweep['epochs']} "
        f"epochs, {sweep['seconds']:.0f} s); baseline validation mean R$^2$ "
        f"{baseline['val_mean_r2']:.3f}; red: selected",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(metrics: dict) -> str:
    rows = [("quantity / metric", "SPACE", "baseline")]
    for q in QUANTITIES:
        rows.append(
            (f"decode R² {q}", *(metrics[m]["decode_r2"][q] for m in ("space", "baseline")))
        )
    for key in (
        "mean_decode_r2",
        "alignment",
        "disentanglement",
        "isotropy",
        "reconstruction_r2",
        "mean_drift_deg",
        "mean_span_drift_deg",
        "train_seconds",
    ):
        rows.append((key, metrics["space"][key], metrics["baseline"][key]))
    lines = [f"| {rows[0][0]} | {rows[0][1]} | {rows[0][2]} |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {a:.3f} | {b:.3f} |" for name, a, b in rows[1:]]
    return "\n".join(lines)


def run(cfg: Config, out_dir: str | Path, *, plots: bool = True) -> dict:
    """The whole demo; writes ``metrics.json``, then the plots, into ``out_dir``.

    1. Model selection: the grid of ``cfg.grid_values`` (plus the baseline, every SPACE weight
       0) as one vmapped ``sj.sweep``, trained on the ``fit`` split and scored on the
       validation split carved from the training data (:func:`select`).
    2. The selected configuration and the baseline retrained on the whole training split and
       compared on the held-out test split, which step 1 never sees.
    """
    require_optional(plots=plots)
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data, sizes = make_data(cfg)
    print(
        f"solve_dims -> pooling grid {sizes['n_bins']}x{sizes['n_bins']}, k = {sizes['k']}; "
        f"minimal_latent_dim -> D = {sizes['latent_dim']}"
    )
    configs = grid_configs(cfg)
    print(
        f"model selection: {len(configs)} configurations x {cfg.sweep_epochs} epochs, vmapped "
        f"in one program (sj.sweep), validation split of {cfg.n_val} training fields ..."
    )
    sweep_result = model_selection(cfg, sizes, data)
    index, why = select(sweep_result)
    selected = {n: sweep_result.rows()[index][n] for n in sweep_result.config_names}
    print(f"  done in {sweep_result.seconds:.0f} s; selected {selected} ({why})")

    metrics, histories = {}, {}
    baseline = {**dict.fromkeys(WEIGHT_NAMES, 0.0), "lr": selected["lr"]}
    for label, config in (("space", selected), ("baseline", baseline)):
        t0 = time.perf_counter()
        result = train(cfg, sizes, data, config=config, label=label)
        seconds = time.perf_counter() - t0
        histories[label] = result["history"]
        m = evaluate(result["model"], data, sizes["k"])
        for key, name in (("drift", "mean_drift_deg"), ("span_drift", "mean_span_drift_deg")):
            drifts = [np.mean(list(d.values())) for d in result["history"][key]]
            m[name] = float(np.mean(drifts)) if drifts else 0.0
        m["train_seconds"] = seconds
        m["hyperparameters"] = dict(config)
        metrics[label] = m
    metrics["selection"] = {
        "index": index,
        "config": selected,
        "rule": why,
        "validation": sweep_result.rows()[index],
        "baseline_validation": sweep_result.rows()[-1],
    }
    metrics["grid"] = sweep_result.to_dict()
    metrics["sweep"] = {
        "vectorized": True,
        "n_configs": len(sweep_result),
        "epochs": cfg.sweep_epochs,
        "seconds": sweep_result.seconds,
        "backend": jax.default_backend(),
    }
    metrics["config"] = {
        **dataclasses.asdict(cfg),
        "quantities": list(QUANTITIES),
        "n_bins": sizes["n_bins"],
        "k": sizes["k"],
        "latent_dim": sizes["latent_dim"],
        "backend": jax.default_backend(),
        "seconds": time.perf_counter() - start,
    }
    # The numbers first: a plotting failure must not lose them.
    with open(out_dir / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)
    paths = plot_all(out_dir, histories, metrics, sweep_result, cfg) if plots else []
    print()
    print(summary(metrics))
    print()
    print(sweep_result.to_markdown(floatfmt=".3f"))
    better = metrics["space"]["mean_decode_r2"] - metrics["baseline"]["mean_decode_r2"]
    losing = [
        q
        for q in QUANTITIES
        if metrics["space"]["decode_r2"][q] < metrics["baseline"]["decode_r2"][q]
    ]
    print(
        f"\nSPACE ({selected}) decodes the quantities {'better' if better > 0 else 'WORSE'} "
        f"than the baseline (mean held-out R² {better:+.3f}); "
        + (f"worse on {', '.join(losing)}. " if losing else "at least as well on every one. ")
        + f"Wrote {out_dir / 'metrics.json'}"
        + (f" and {', '.join(p.name for p in paths)}" if paths else "")
        + f" in {time.perf_counter() - start:.0f} s."
    )
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", "--small", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "artifacts/demo")
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true", help="metrics.json only")
    args = parser.parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    cfg = dataclasses.replace(cfg, seed=args.seed)
    run(cfg, args.out, plots=not args.no_plots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
