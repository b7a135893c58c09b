"""space_jax: guided latent subspace learning (SPACE) as pure JAX functions.

Every array function is jittable, differentiable and vmappable; configuration (solver, ``k``,
``n_dir``) is static and passed by keyword. See the README for an overview.
"""

import logging

from . import linalg  # sj.linalg.eigh, svd, lstsq, ...: batch-safe decompositions
from .dims import (
    align_latent_dim,
    bins_for_modes,
    explained_rank,
    explained_rank_from_gram,
    k_per_q,
    minimal_latent_dim,
    optimal_bins,
    solve_dims,
)
from .linalg import (
    Solver,
    full,
    gram,
    left,
    residual_gram_eigvals,
    right,
    singular_values,
    symmetric_eigvals,
)
from .losses import (
    LossWeights,
    alignment_loss,
    combined_loss,
    disentanglement_loss,
    isotropy_loss,
    stability_loss,
)
from .metrics import subspace_change
from .moment_losses import combined_loss_from_moments
from .moment_solvers import (
    k_per_q_from_moments,
    solve_dims_from_moments,
    solve_subspaces_from_moments,
)
from .moments import Moments, merge_moments, moments
from .pooling import compute_Q, ensure_dim, input_to_quantity, pool, pool_quantities, to_device
from .shared import ProjectionConfig, SharedSpace, init_projections, train_projections
from .streaming import stream_moments
from .subspaces import Space, fit_decoders, principal_directions, solve_subspaces, subspaces
from .sweep import SweepResult, expand_grid, sweep

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "LossWeights",
    "Moments",
    "ProjectionConfig",
    "SharedSpace",
    "Solver",
    "Space",
    "SweepResult",
    "align_latent_dim",
    "alignment_loss",
    "bins_for_modes",
    "combined_loss",
    "combined_loss_from_moments",
    "compute_Q",
    "disentanglement_loss",
    "ensure_dim",
    "expand_grid",
    "explained_rank",
    "explained_rank_from_gram",
    "fit_decoders",
    "full",
    "gram",
    "init_projections",
    "input_to_quantity",
    "isotropy_loss",
    "k_per_q",
    "k_per_q_from_moments",
    "left",
    "linalg",
    "merge_moments",
    "minimal_latent_dim",
    "moments",
    "optimal_bins",
    "pool",
    "pool_quantities",
    "principal_directions",
    "residual_gram_eigvals",
    "right",
    "singular_values",
    "solve_dims",
    "solve_dims_from_moments",
    "solve_subspaces",
    "solve_subspaces_from_moments",
    "stability_loss",
    "stream_moments",
    "subspace_change",
    "subspaces",
    "sweep",
    "symmetric_eigvals",
    "to_device",
    "train_projections",
]
