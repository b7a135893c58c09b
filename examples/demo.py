"""SPACE on heat-equation fields: does the latent space decode the physics better?

The pipeline of spacelearn's README, in JAX and Flax NNX:

1. Data made here: solutions of the heat equation ``u_t = nu * (u_xx + u_yy)`` on a periodic
   grid, from random Gaussian-blob initial conditions, observed at random times. Per sample,
   four quantities: the field, its gradient magnitude, its Laplacian and its energy density
   ``u**2 / 2``, pooled with ``input_to_quantity``.
2. ``solve_dims`` picks the pooling grid and the subspace size of each quantity,
   ``minimal_latent_dim`` the latent size.
3. An MLP autoencoder (Flax NNX) is trained on reconstruction plus the SPACE loss, the subspaces
   refreshed every few epochs by ``space_jax.nnx.SpaceRegularizer``; the same model from the
   same initialisation, on the same batches, without the SPACE loss is the baseline.
4. Both are evaluated on held-out fields: each pooled quantity is decoded linearly from its
   k-dimensional subspace, fitted on the training split (R^2), plus the SPACE terms.
5. A small sweep over the SPACE weight and the seed (``space_jax.sweep``).

Writes ``artifacts/demo/metrics.json`` and plots under ``artifacts/demo/``. Run with
``python examples/demo.py`` (``make demo``); ``--quick`` runs a tiny version in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

import space_jax as sj
from space_jax.nnx import SpaceRegularizer

QUANTITIES = ("field", "grad_mag", "laplacian", "energy")


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
    space_weight: float = 1.0  # one weight for all four SPACE terms
    sweep_weights: tuple = (0.0, 0.1, 0.3, 1.0, 3.0)
    sweep_seeds: tuple = (0, 1)
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
            sweep_weights=(0.0, 1.0),
            sweep_seeds=(0,),
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


def _losses(model: AutoEncoder, x, y, space_weight):
    z = model.encode(x)
    task = jnp.mean((model.decode(z) - x.reshape(x.shape[0], -1)) ** 2)
    weights = sj.LossWeights(*(space_weight * w for w in model.space.weights.get_value()))
    space, terms = model.space.loss_and_terms(z, y, weights=weights)
    return task + space, (task, terms)


@nnx.jit
def train_step(model, optimizer, x, y, space_weight):
    grads_fn = nnx.value_and_grad(_losses, has_aux=True)
    (_, (task, terms)), grads = grads_fn(model, x, y, space_weight)
    optimizer.update(model, grads)
    return task, terms


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
    cosines = jnp.clip(jnp.linalg.svd(w_old @ w_new.T, compute_uv=False), 0.0, 1.0)
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
    """Fields, pooled and standardised quantities, and the sizes from ``solve_dims``."""
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
    data = {"x_train": u_train, "x_test": u_test, "y_train": y_train, "y_test": y_test}
    sizes = {"n_bins": n_bins, "k": k, "latent_dim": latent_dim, "dims": dims}
    return data, sizes


def build_model(cfg: Config, sizes: dict, data: dict, seed: int) -> AutoEncoder:
    shapes = {q: tuple(v.shape[1:]) for q, v in data["y_train"].items()}
    space = SpaceRegularizer(sizes["latent_dim"], shapes, k=sizes["k"])
    return AutoEncoder(
        cfg.grid**2, cfg.hidden, sizes["latent_dim"], space, rngs=nnx.Rngs(jax.random.key(seed))
    )


def train(cfg: Config, sizes: dict, data: dict, *, space_weight: float, label: str) -> dict:
    """Trains one model; returns it with per-epoch curves and per-refresh drift."""
    model = build_model(cfg, sizes, data, cfg.seed)
    optimizer = nnx.Optimizer(model, optax.adam(cfg.lr), wrt=nnx.Param)
    x_ref = data["x_train"][: cfg.n_ref]
    y_ref = {q: v[: cfg.n_ref] for q, v in data["y_train"].items()}
    order = np.random.default_rng(cfg.seed + 1)  # same batches for every model
    n_batches = cfg.n_train // cfg.batch
    weight = jnp.asarray(space_weight, jnp.float32)
    history = {
        "task": [],
        "alignment": [],
        "disentanglement": [],
        "isotropy": [],
        "drift": [],
        "span_drift": [],
    }
    bar = tqdm(range(cfg.epochs), desc=f"{label:>8}", unit="epoch", leave=True)
    for epoch in bar:
        if epoch % cfg.refresh_every == 0:
            drift = refresh(model, x_ref, y_ref)
            if epoch > 0:
                history["drift"].append({q: float(d) for q, d in drift["direction"].items()})
                history["span_drift"].append({q: float(d) for q, d in drift["span"].items()})
        perm = order.permutation(cfg.n_train)
        sums = dict.fromkeys(("task", "alignment", "disentanglement", "isotropy"), 0.0)
        for b in range(n_batches):
            idx = jnp.asarray(perm[b * cfg.batch : (b + 1) * cfg.batch])
            y = {q: v[idx] for q, v in data["y_train"].items()}
            task, terms = train_step(model, optimizer, data["x_train"][idx], y, weight)
            sums["task"] += task
            for t in ("alignment", "disentanglement", "isotropy"):
                sums[t] += terms[t]
        for t, s in sums.items():
            history[t].append(float(s) / n_batches)
        bar.set_postfix(task=f"{history['task'][-1]:.4f}", align=f"{history['alignment'][-1]:.3f}")
    return {"model": model, "history": history}


def _r2_traced(y_true: jax.Array, y_pred: jax.Array) -> jax.Array:
    y_true = y_true.reshape(y_true.shape[0], -1)
    sst = jnp.sum((y_true - y_true.mean(axis=0)) ** 2)
    return 1.0 - jnp.sum((y_true - y_pred) ** 2) / sst


def make_sweep_train(cfg: Config, sizes: dict, data: dict):
    """A pure training function of one configuration, for ``sj.sweep`` (functional NNX).

    Everything the loop of :func:`train` does (refreshes, Adam steps, held-out evaluation)
    runs inside ``lax.scan``: an outer scan over refresh periods, an inner one over batches.
    ``config`` holds traced scalars: ``space_weight`` and the initialisation ``seed``.
    """
    shapes = {q: tuple(v.shape[1:]) for q, v in data["y_train"].items()}
    k, latent_dim = sizes["k"], sizes["latent_dim"]
    n_batches = cfg.n_train // cfg.batch
    periods = -(-cfg.sweep_epochs // cfg.refresh_every)
    tx = optax.adam(cfg.lr)

    def new_model(seed):
        space = SpaceRegularizer(latent_dim, shapes, k=k)
        return AutoEncoder(
            cfg.grid**2, cfg.hidden, latent_dim, space, rngs=nnx.Rngs(jax.random.key(seed))
        )

    def train_fn(config, x, y, x_ref, y_ref, x_test, y_test):
        model = new_model(config["seed"])
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        graphdef, state = nnx.split((model, optimizer))
        perm_key = jax.random.key(cfg.seed + 1)

        def step(state, idx):
            model, optimizer = nnx.merge(graphdef, state)
            yb = {q: v[idx] for q, v in y.items()}
            grads, _ = nnx.grad(_losses, has_aux=True)(model, x[idx], yb, config["space_weight"])
            optimizer.update(model, grads)
            return nnx.state((model, optimizer)), None

        def epoch(state, e):
            perm = jax.random.permutation(jax.random.fold_in(perm_key, e), x.shape[0])
            batches = perm[: n_batches * cfg.batch].reshape(n_batches, cfg.batch)
            return jax.lax.scan(step, state, batches)[0], None

        def period(state, p):
            model, optimizer = nnx.merge(graphdef, state)
            model.space.refresh(model.encode(x_ref), y_ref)
            epochs = p * cfg.refresh_every + jnp.arange(cfg.refresh_every)
            return jax.lax.scan(epoch, nnx.state((model, optimizer)), epochs)[0], None

        state, _ = jax.lax.scan(period, state, jnp.arange(periods))
        model, _ = nnx.merge(graphdef, state)
        z_train, z_test = model.encode(x), model.encode(x_test)
        space = sj.solve_subspaces(z_train, y, k=k)
        z_mean = z_train.mean(axis=0)
        r2 = []
        for q in QUANTITIES:
            y_mean = y[q].reshape(x.shape[0], -1).mean(axis=0)
            r2.append(_r2_traced(y_test[q], (z_test - z_mean) @ space.W[q].T @ space.A[q] + y_mean))
        recon = model.decode(z_test)
        return {
            "mean_decode_r2": jnp.mean(jnp.stack(r2)),
            "reconstruction_mse": jnp.mean((recon - x_test.reshape(x_test.shape[0], -1)) ** 2),
        }

    return train_fn


def vmap_is_safe() -> bool:
    """Whether batched LAPACK calls (what ``vmap`` makes of the SVDs and eigensolvers of a
    SPACE run) are safe here.

    jaxlib 0.10 on CPU spreads a batched LAPACK call over XLA's intra-op thread pool and blocks
    until the pieces are done; when the call itself runs on a pool thread, this can deadlock
    (seen here in the full-size sweep: ``ParallelBatchMap`` in ``lapack_sgesdd_ffi``, every
    worker idle). jaxlib 0.11 no longer does this.
    """
    if jax.default_backend() != "cpu":
        return True
    major, minor = (int(p) for p in jaxlib.__version__.split(".")[:2])
    return (major, minor) >= (0, 11)


def sweep_space_weight(
    cfg: Config, sizes: dict, data: dict, *, vectorize: bool | None = None
) -> sj.SweepResult:
    """The SPACE weight x seed grid: one vmapped program, or one run after another where
    :func:`vmap_is_safe` says no (``vectorize=None``)."""
    vectorize = vmap_is_safe() if vectorize is None else vectorize
    grid = {"space_weight": list(cfg.sweep_weights), "seed": list(cfg.sweep_seeds)}
    x_ref = data["x_train"][: cfg.n_ref]
    y_ref = {q: v[: cfg.n_ref] for q, v in data["y_train"].items()}
    args = (data["x_train"], data["y_train"], x_ref, y_ref, data["x_test"], data["y_test"])
    return sj.sweep(make_sweep_train(cfg, sizes, data), grid, *args, vectorize=vectorize)


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
        fig, ax = plt.subplots(figsize=(7, 4))
        w = np.asarray(sweep_result["space_weight"], np.float64)
        r2 = np.asarray(sweep_result["mean_decode_r2"])
        mse = np.asarray(sweep_result["reconstruction_mse"])
        xw = np.where(w > 0, w, w[w > 0].min() / 3 if np.any(w > 0) else 1.0)
        ax.plot(xw, r2, "o", color="tab:blue", label="mean decode R$^2$ (each seed)")
        order = np.argsort(xw)
        uniq = np.unique(xw[order])
        ax.plot(uniq, [r2[xw == u].mean() for u in uniq], "-", color="tab:blue")
        ax.set(xscale="log", xlabel="SPACE weight (leftmost point: 0, the baseline)")
        ax.set_ylabel("held-out mean decode R$^2$", color="tab:blue")
        ax2 = ax.twinx()
        ax2.plot(uniq, [mse[xw == u].mean() for u in uniq], "s--", color="tab:gray")
        ax2.set_ylabel("reconstruction MSE (test)", color="tab:gray")
        mode = "vmapped" if metrics["sweep"]["vectorized"] else "one after another"
        ax.set_title(f"sweep ({mode}): {len(w)} runs in {sweep_result.seconds:.0f} s")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(out_dir / "sweep.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


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


def run(cfg: Config, out_dir: str | Path, *, sweep: bool = True, sweep_mode: str = "auto") -> dict:
    """The whole demo; writes ``metrics.json`` and the plots into ``out_dir``.

    ``sweep_mode``: ``"auto"`` (vmapped where :func:`vmap_is_safe`), ``"vmap"`` or ``"loop"``.
    """
    if sweep_mode not in ("auto", "vmap", "loop"):
        raise ValueError(f"sweep_mode: expected 'auto', 'vmap' or 'loop', got {sweep_mode!r}")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data, sizes = make_data(cfg)
    print(
        f"solve_dims -> pooling grid {sizes['n_bins']}x{sizes['n_bins']}, k = {sizes['k']}; "
        f"minimal_latent_dim -> D = {sizes['latent_dim']}"
    )
    metrics, histories = {}, {}
    for label, weight in (("space", cfg.space_weight), ("baseline", 0.0)):
        t0 = time.perf_counter()
        result = train(cfg, sizes, data, space_weight=weight, label=label)
        seconds = time.perf_counter() - t0
        histories[label] = result["history"]
        m = evaluate(result["model"], data, sizes["k"])
        for key, name in (("drift", "mean_drift_deg"), ("span_drift", "mean_span_drift_deg")):
            drifts = [np.mean(list(d.values())) for d in result["history"][key]]
            m[name] = float(np.mean(drifts)) if drifts else 0.0
        m["train_seconds"] = seconds
        metrics[label] = m
    sweep_result = None
    if sweep and cfg.sweep_weights:
        vectorize = vmap_is_safe() if sweep_mode == "auto" else sweep_mode == "vmap"
        runs = len(cfg.sweep_weights) * len(cfg.sweep_seeds)
        how = (
            "vmapped" if vectorize else "one after another (jaxlib < 0.11 on CPU, see vmap_is_safe)"
        )
        print(f"sweep: {runs} runs, {how} ...")
        sweep_result = sweep_space_weight(cfg, sizes, data, vectorize=vectorize)
        metrics["sweep"] = {
            **sweep_result.to_dict(),
            "seconds": sweep_result.seconds,
            "vectorized": vectorize,
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
    paths = plot_all(out_dir, histories, metrics, sweep_result, cfg)
    with open(out_dir / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)
    print()
    print(summary(metrics))
    if sweep_result is not None:
        print()
        print(sweep_result.to_markdown())
    better = metrics["space"]["mean_decode_r2"] - metrics["baseline"]["mean_decode_r2"]
    print(
        f"\nSPACE decodes the quantities {'better' if better > 0 else 'WORSE'} than the baseline "
        f"(mean held-out R² {better:+.3f}). Wrote {out_dir / 'metrics.json'} and "
        f"{', '.join(p.name for p in paths)} in {metrics['config']['seconds']:.0f} s."
    )
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", "--small", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "artifacts/demo")
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sweep", action="store_true", help="skip the weight sweep")
    parser.add_argument(
        "--sweep-mode",
        choices=("auto", "vmap", "loop"),
        default="auto",
        help="vmap the sweep, run it as a loop, or vmap where safe (default)",
    )
    args = parser.parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    cfg = dataclasses.replace(cfg, seed=args.seed)
    run(cfg, args.out, sweep=not args.no_sweep, sweep_mode=args.sweep_mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
