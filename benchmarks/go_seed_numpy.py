"""The Go seed's ``TrainProjections`` in NumPy: the per-sample loop, each sample's work vectorised.

The baseline of ``benchmarks.shared_space``. The seed visits the samples one by one (each update
depends on the previous one), so the loop over samples stays in Python; within a sample the
seed's loops over matrix entries become outer products. Float64, as the seed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["train_projections_numpy"]


def train_projections_numpy(
    projections: Mapping[str, np.ndarray],
    reconstructions: Mapping[str, np.ndarray],
    data: Mapping[str, np.ndarray],
    *,
    learning_rate: float = 0.01,
    n_epochs: int = 100,
    alignment_weight: float = 1.0,
    lr_decay: float = 0.999,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Runs the seed's per-sample SGD and returns the trained ``(projections, reconstructions)``.

    Args:
      projections: model name -> ``P`` ``(n, d)``; copied, not modified.
      reconstructions: model name -> ``R`` ``(d, n)``; copied, not modified.
      data: model name -> aligned samples ``(B, n)``.
      learning_rate, n_epochs, alignment_weight: the seed's ``ProjectionConfig``.
      lr_decay: the seed's learning-rate factor after each epoch.
    """
    P = {m: np.array(p, dtype=np.float64) for m, p in projections.items()}
    R = {m: np.array(r, dtype=np.float64) for m, r in reconstructions.items()}
    X = {m: np.asarray(x, dtype=np.float64) for m, x in data.items()}
    names = list(X)
    lr = learning_rate
    for _ in range(n_epochs):
        for i in range(len(X[names[0]])):
            latents = {m: X[m][i] @ P[m] for m in names}
            mean_latent = sum(latents.values()) / len(names)
            for m in names:
                x, z = X[m][i], latents[m]
                d_recon = z @ R[m] - x
                R[m] -= lr * np.outer(z, d_recon)
                # The seed sends the error back through the reconstruction it just updated.
                P[m] -= lr * np.outer(x, R[m] @ d_recon + alignment_weight * (z - mean_latent))
        lr *= lr_decay
    return P, R
