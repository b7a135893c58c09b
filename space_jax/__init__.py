"""space_jax: guided latent subspace learning (SPACE) as pure JAX functions.

Every array function is jittable, differentiable and vmappable; configuration (solver, ``k``,
``n_dir``) is static and passed by keyword. See the README for an overview.
"""

import logging

from .dims import (
    align_latent_dim,
    bins_for_modes,
    explained_rank,
    k_per_q,
    minimal_latent_dim,
    optimal_bins,
    solve_dims,
)
from .linalg import Solver, full, gram, left, right, singular_values, symmetric_eigvals
from .losses import (
    LossWeights,
    alignment_loss,
    combined_loss,
    disentanglement_loss,
    isotropy_loss,
    stability_loss,
)
from .metrics import subspace_change
from .pooling import compute_Q, ensure_dim, input_to_quantity, pool, pool_quantities, to_device
from .subspaces import Space, fit_decoders, principal_directions, solve_subspaces, subspaces

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "LossWeights",
    "Solver",
    "Space",
    "align_latent_dim",
    "alignment_loss",
    "bins_for_modes",
    "combined_loss",
    "compute_Q",
    "disentanglement_loss",
    "ensure_dim",
    "explained_rank",
    "fit_decoders",
    "full",
    "gram",
    "input_to_quantity",
    "isotropy_loss",
    "k_per_q",
    "left",
    "minimal_latent_dim",
    "optimal_bins",
    "pool",
    "pool_quantities",
    "principal_directions",
    "right",
    "singular_values",
    "solve_dims",
    "solve_subspaces",
    "stability_loss",
    "subspace_change",
    "subspaces",
    "symmetric_eigvals",
    "to_device",
]
