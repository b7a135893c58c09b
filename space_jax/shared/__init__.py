"""A shared latent space that several models project into and read back from.

The Go seed's cross-model space (``seeds/004``) in functional form. Each registered model ``m``
with ``n_m`` features owns four arrays, a pytree ``params[m]``:

* ``projection`` ``P_m`` ``(n_m, d)`` and ``reconstruction`` ``R_m`` ``(d, n_m)``, as the seed;
* ``mean`` and ``scale`` ``(n_m,)``, the input standardisation (zeros and ones for the seed's
  objective), so that ``project(m, x) = ((x - mean) / scale) @ P_m`` and
  ``retrieve(m, z) = (z @ R_m) * scale + mean``.

Two objectives, on the standardised inputs ``x_m`` of aligned samples (``z_m = x_m @ P_m``,
``z̄`` the mean of the ``z_m`` over the ``M`` models):

* ``"go"``, the seed's: per model ``½||z_m R_m - x_m||² + alignment_weight · ½||z_m - z̄||²``
  with ``z̄`` held constant, stepped as the seed steps it (``R`` first, then ``P`` through the
  updated ``R``). It can cheat: scaling every ``P`` by ``c`` and every ``R`` by ``1/c`` leaves
  the reconstruction alone and scales the alignment term by ``c²``.
* ``"invariant"`` (the default), which cannot:

  - reconstruction, what ``translate`` needs: the mean over target models ``b`` of
    ``mean_{a≠b} mse(z_a R_b, x_b) + self_weight · mse(z_b R_b, x_b)``. Cross pairs dominate
    because a shared ``R_b`` cannot be optimal for both: the best read-out of ``x_b`` from
    another model's latents is shrunk by their correlation, the best self read-out is not;
  - alignment, scale-free: ``Σ_m ||z_m - z̄||² / Σ_m ||z_m||²``, in ``[0, 1]``;
  - whitening, ``||cov(z̄) - I||_F² / d``: fixes the scale of the space and keeps every latent
    direction alive (so shrinking ``P`` costs, and no direction collapses);
  - ``ridge · mean_m(||P_m||² / d + ||R_m||² / n_m)``.

  Inputs are centered per feature and scaled per model to unit mean variance, so models of
  different scales weigh alike while each keeps its features' relative weights. Training
  starts from the closed-form generalised CCA (MAXVAR) of the aligned data, each ``R_b`` being
The package, one concept a module: :mod:`~space_jax.shared.config` (:class:`ProjectionConfig`),
:mod:`~space_jax.shared.checks` (what training is given), :mod:`~space_jax.shared.objectives`
(the two losses), :mod:`~space_jax.shared.gcca` (the closed-form start),
:mod:`~space_jax.shared.training` (initialisation and the jitted loop),
:mod:`~space_jax.shared.io` (the file format) and :mod:`~space_jax.shared.space`
(:class:`SharedSpace`).
"""

from .config import Params, ProjectionConfig
from .objectives import projection_loss
from .space import SharedSpace
from .training import init_projections, train_projections

__all__ = [
    "Params",
    "ProjectionConfig",
    "SharedSpace",
    "init_projections",
    "projection_loss",
    "train_projections",
]
