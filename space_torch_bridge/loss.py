"""The SPACE losses, as spacelearn's ``spacelearn.loss``, differentiable in torch.

Each call is one torch custom op (``torch.ops.space_torch_bridge.<name>``) that runs one jitted
XLA call and also returns the gradients of the inputs that require grad (``Z``, and tensors
inside ``W``, ``A``, ``Y``, ``W_prev``); ``loss.backward()`` fills their ``.grad``. The ops trace
under ``torch.compile`` (``fullgraph=True`` too).

Shared conventions: ``Z`` is ``(B, D)`` with ``B >= 2``; ``W`` is ``{q: (k_q, D)}``, ``A`` is
``{q: (k_q, m_q)}``, ``Y`` is ``{q: (B, ...)}`` (flattened to ``(B, m_q)``; 1-D targets are
``(B, 1)``); dict keys are the quantity names and their order is the quantity order. All
tensors share one device and are floating point (mixed dtypes are promoted as torch would;
float16/bfloat16 are computed in float32). Results are 0-dim tensors on that device in the
promoted dtype. Every call checks its arguments (types, key sets, shapes, NaN/inf) and raises
``TypeError``/``ValueError`` naming the argument and the quantity.
"""

from __future__ import annotations

import torch

import space_jax as _sj
from space_torch_bridge import _autograd
from space_torch_bridge._validate import check_positive_int
from space_torch_bridge.settings import keywords, solver_options

__all__ = [
    "alignment_loss",
    "combined_loss",
    "disentanglement_loss",
    "isotropy_loss",
    "stability_loss",
]

Tensors = dict[str, torch.Tensor]
_LOSSES = {
    "alignment_loss": _sj.alignment_loss,
    "disentanglement_loss": _sj.disentanglement_loss,
    "isotropy_loss": _sj.isotropy_loss,
    "stability_loss": _sj.stability_loss,
    "combined_loss": _sj.combined_loss,
}
for _name, _fn in _LOSSES.items():
    _autograd.register(_name, _fn, loss=True)
_KEYWORDS = {name: keywords(fn) for name, fn in _LOSSES.items()}


def _pair_order(W: Tensors) -> tuple[tuple[str, tuple], ...]:
    """The quantity order of the disentanglement pairs: the dict's own, as spacelearn's loops.

    It matters because each pair is normalised by the size of its first basis; ``space_jax``
    defaults to sorted names (what a jitted dict gives) and takes the order as a keyword.
    """
    return (("order", tuple(W)),) if isinstance(W, dict) else ()


def alignment_loss(Z: torch.Tensor, W: Tensors, A: Tensors, Y: Tensors) -> torch.Tensor:
    """How well each subspace decodes its target: ``mean_q mean((Zc @ W_q.T @ A_q - Yc_q)**2)``.

    Args:
      Z: latents ``(B, D)``.
      W: bases ``{q: (k_q, D)}``; the quantities of the loss are ``W``'s keys.
      A: decoders ``{q: (k_q, m_q)}``, the same keys as ``W``.
      Y: targets ``{q: (B, ...)}`` with at least ``W``'s keys; ``Zc`` and ``Yc`` are centered
        over the batch.

    Returns:
      A 0-dim tensor; 0 for a perfect linear decoding.

    Differences from spacelearn: missing keys and mismatched shapes raise a ``ValueError``
    that names them (spacelearn raises ``KeyError`` or a matmul ``RuntimeError``).
    """
    return _autograd.call(
        _sj.alignment_loss,
        (Z, W, A, Y),
        names=("Z", "W", "A", "Y"),
        label="alignment_loss",
        loss=True,
    )


def disentanglement_loss(Z: torch.Tensor, W: Tensors) -> torch.Tensor:
    """Correlation between the subspaces' coordinates, averaged over pairs of quantities.

    For each pair ``i < j`` (in ``W``'s order): ``S = Zc @ W.T`` standardised per column
    (centered, divided by the unbiased std + 1e-8), ``Corr = S_i.T @ S_j / B``, adds
    ``trace(Corr.T @ Corr) / k_i``; the mean over pairs.

    Args:
      Z: latents ``(B, D)``.
      W: bases ``{q: (k_q, D)}``.

    Returns:
      A 0-dim tensor; 0 with fewer than two quantities.

    Differences from spacelearn: no ``print`` of the pair count; float64 inputs give a
    float64 loss (spacelearn accumulates in float32).
    """
    return _autograd.call(
        _sj.disentanglement_loss,
        (Z, W),
        names=("Z", "W"),
        label="disentanglement_loss",
        static=dict(_pair_order(W)),
        loss=True,
    )


def isotropy_loss(Z: torch.Tensor, W: Tensors, n_dir: int = 32) -> torch.Tensor:
    """How unevenly the latent space outside all subspaces is used.

    ``R = Zc - Zc @ W_all.T @ W_all`` (``W_all``: every basis stacked by rows); ``s`` = the
    first ``n_dir`` singular values of ``R``; ``mean((s / (mean(s) + 1e-8) - 1) ** 2)``.

    Args:
      Z: latents ``(B, D)``.
      W: bases ``{q: (k_q, D)}``.
      n_dir: how many leading singular values of the residual enter (an int >= 1; default
        32, as spacelearn); fewer when the residual has fewer.

    Returns:
      A 0-dim tensor; 0 for an isotropic residual.

    Differences from spacelearn: the spectrum is exact for every size (``config.solver_mode
    = "auto"``; spacelearn's auto switches to a rank-6 randomised SVD above 100,000
    elements), and the gradient with respect to ``W`` is the central derivative where the
    residual's zero singular values make spacelearn's depend on LAPACK's null-space vectors.
    ``n_dir`` must be an int (spacelearn slices with it, so ``True`` acts as 1 there).
    """
    n_dir = check_positive_int(n_dir, "n_dir", "isotropy_loss")
    static, seed = solver_options(_KEYWORDS["isotropy_loss"])
    return _autograd.call(
        _sj.isotropy_loss,
        (Z, W),
        names=("Z", "W"),
        label="isotropy_loss",
        static={**static, "n_dir": n_dir},
        seed=seed,
        loss=True,
    )


def stability_loss(W: Tensors, W_prev: Tensors | None) -> torch.Tensor:
    """How far the bases moved: ``mean_q ||W_q - W_prev_q||_F ** 2``, or 0 without ``W_prev``.

    Args:
      W: bases ``{q: (k_q, D)}``.
      W_prev: the previous bases with the same keys and shapes, or None (spacelearn's
        signature: positional, no default).

    Returns:
      A 0-dim tensor. With ``W_prev=None`` it is a constant 0 in ``W``'s dtype, as in
      spacelearn: ``W.grad`` stays None.
    """
    return _autograd.call(
        _sj.stability_loss,
        (W, W_prev),
        names=("W", "W_prev"),
        label="stability_loss",
        loss=True,
        differentiable=W_prev is not None,
    )


def combined_loss(
    Z: torch.Tensor,
    W: Tensors,
    A: Tensors,
    Y: Tensors,
    W_prev: Tensors | None,
    *,
    n_dir: int = 32,
) -> torch.Tensor:
    """The SPACE objective: alignment + disentanglement + isotropy + stability, in ONE call.

    The four terms are computed together from the batch's second-order statistics in one
    jitted XLA call, which also returns the gradients ``backward`` needs.

    Args:
      Z: latents ``(B, D)``.
      W: bases ``{q: (k_q, D)}``.
      A: decoders ``{q: (k_q, m_q)}``.
      Y: pooled targets ``{q: (B, ...)}``.
      W_prev: the previous bases, or None for no stability term. It is positional and has
        no default, exactly as in spacelearn 0.1.0 (``combined_loss(Z, W, A, Y, None)``),
        so code written for either runs on both.
      n_dir: leading singular values in the isotropy term (keyword only; default 32).

    Returns:
      A 0-dim tensor on ``Z``'s device in the inputs' promoted dtype.

    Differences from spacelearn: those of the four terms (see each); the terms are not
    weighted (``space_jax.combined_loss`` takes ``weights``).
    """
    n_dir = check_positive_int(n_dir, "n_dir", "combined_loss")
    static, seed = solver_options(_KEYWORDS["combined_loss"])
    return _autograd.call(
        _sj.combined_loss,
        (Z, W, A, Y, W_prev),
        names=("Z", "W", "A", "Y", "W_prev"),
        label="combined_loss",
        static={**static, **dict(_pair_order(W)), "n_dir": n_dir},
        seed=seed,
        loss=True,
    )
