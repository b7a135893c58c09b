"""The training configuration of a shared space, :class:`ProjectionConfig`, and its checks."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .._checks import check_positive_int

__all__ = ["DEFAULT_CONFIG", "FIELDS", "Params", "ProjectionConfig", "check_hyperparameters"]

Params = dict[str, dict[str, jax.Array]]
"""Per model: ``projection`` ``(n, d)``, ``reconstruction`` ``(d, n)``, ``mean`` and ``scale``
``(n,)``."""

_OBJECTIVES = ("invariant", "go")
_OPTIMIZERS = ("adam", "sgd")
_INITS = ("gcca", "xavier")
FIELDS = ("projection", "reconstruction", "mean", "scale")


def _static(default: Any) -> Any:
    return dataclasses.field(default=default, metadata={"static": True})


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ProjectionConfig:
    """How :func:`train_projections` trains (the seed's fields and defaults, plus options).

    Float fields are pytree leaves: give them as arrays under ``jax.vmap`` to sweep them. The
    other fields are static. Fields left at ``None`` follow the objective: the seed's choices
    for ``objective="go"`` (per-sample SGD in index order, learning rate times 0.999 each epoch,
    Xavier start), and Adam on the full batch from the GCCA solution for ``"invariant"``.

    Attributes:
      latent_dim: latent size for training; 0 means the space's own ``dim``. A different value
        re-initialises :class:`SharedSpace` at that size (the functional API refuses it).
      learning_rate: step size.
      n_epochs: passes over the data.
      alignment_weight: weight of the alignment term.
      whitening_weight: weight of ``||cov(z̄) - I||² / d`` (``"invariant"`` only).
      self_weight: weight of a model's own reconstruction next to the cross-model ones (which
        share weight 1; ``"invariant"`` only).
      ridge: Tikhonov weight of the GCCA start and of the weight penalty (``"invariant"``).
      lr_decay: learning-rate factor per epoch (``None``: 0.999 for ``"go"``, else 1).
      objective: ``"invariant"`` (default) or ``"go"`` (the seed's).
      optimizer: ``"adam"`` or ``"sgd"`` (``None``: ``"sgd"`` for ``"go"``, else ``"adam"``).
      batch_size: samples per step (``None``: 1 for ``"go"``, else the full batch). A last
        partial batch is filled with the epoch's first samples.
      init: ``"gcca"`` (closed form) or ``"xavier"`` (start from the given matrices).
      shuffle: reshuffle every epoch (``None``: off for ``"go"``, else on).
      seed: seed of the shuffling key when :func:`train_projections` gets no ``key``.
    """

    latent_dim: int = _static(0)
    learning_rate: ArrayLike = 0.01
    n_epochs: int = _static(100)
    alignment_weight: ArrayLike = 1.0
    whitening_weight: ArrayLike = 1.0
    self_weight: ArrayLike = 0.1
    ridge: ArrayLike = 1e-2
    lr_decay: ArrayLike | None = None
    objective: str = _static("invariant")
    optimizer: str | None = _static(None)
    batch_size: int | None = _static(None)
    init: str | None = _static(None)
    shuffle: bool | None = _static(None)
    seed: int = _static(0)

    def __post_init__(self) -> None:
        for field, choices in (
            ("objective", _OBJECTIVES),
            ("optimizer", (None, *_OPTIMIZERS)),
            ("init", (None, *_INITS)),
            ("shuffle", (None, True, False)),
        ):
            value = getattr(self, field)
            if value not in choices or (field == "shuffle" and not isinstance(value, bool | None)):
                raise ValueError(
                    f"ProjectionConfig.{field}: expected one of {choices}, "
                    f"got {getattr(self, field)!r}"
                )
        for field in _FLOAT_FIELDS:
            _check_real(getattr(self, field), field)
        check_positive_int(self.n_epochs, "ProjectionConfig.n_epochs")
        check_positive_int(self.latent_dim, "ProjectionConfig.latent_dim", minimum=0)
        check_positive_int(self.seed, "ProjectionConfig.seed", minimum=0)
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "ProjectionConfig.batch_size")

    def replace(self, **changes: Any) -> ProjectionConfig:
        """A copy with ``changes`` (``config.replace(learning_rate=lr)`` under ``vmap``)."""
        return dataclasses.replace(self, **changes)

    def resolved(self) -> ProjectionConfig:
        """This config with every ``None`` replaced by its objective's choice."""
        go = self.objective == "go"
        return self.replace(
            lr_decay=(0.999 if go else 1.0) if self.lr_decay is None else self.lr_decay,
            optimizer=self.optimizer or ("sgd" if go else "adam"),
            batch_size=self.batch_size if self.batch_size is not None or not go else 1,
            init=self.init or ("xavier" if go else "gcca"),
            shuffle=(not go) if self.shuffle is None else self.shuffle,
        )


_FLOAT_FIELDS = (
    "learning_rate",
    "alignment_weight",
    "whitening_weight",
    "self_weight",
    "ridge",
    "lr_decay",
)


def _check_real(value: Any, field: str) -> None:
    """Refuses what cannot be a real number (a string, a bool, a complex, a dict, a non-numeric
    array) at construction. Anything else passes: pytree operations rebuild configs with
    arbitrary leaves (vmap's axis specs, tracers, cotangents), so values are checked in
    :func:`check_hyperparameters`, when training."""
    if value is None and field == "lr_decay":
        return
    dtype = getattr(value, "dtype", None)
    wrong = isinstance(value, str | bytes | bool | complex | Mapping) or (
        dtype is not None
        and not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer))
    )
    if wrong:
        raise TypeError(
            f"ProjectionConfig.{field}: expected a real number (or an array of them under "
            f"vmap), got {value!r} of type {type(value).__name__}"
        )


DEFAULT_CONFIG = ProjectionConfig()


def check_hyperparameters(config: ProjectionConfig) -> None:
    """Value checks of the float fields that are concrete (traced ones are the caller's)."""
    for field, low, low_ok, high in (
        ("learning_rate", 0.0, False, math.inf),
        ("alignment_weight", 0.0, True, math.inf),
        ("whitening_weight", 0.0, True, math.inf),
        ("self_weight", 0.0, True, math.inf),
        ("ridge", 0.0, True, math.inf),
        ("lr_decay", 0.0, False, 1.0),
    ):
        value = getattr(config, field)
        if isinstance(value, jax.core.Tracer):
            continue
        _check_real(value, field)
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise TypeError(
                f"config.{field}: expected a real number, got {value!r} of type "
                f"{type(value).__name__}"
            ) from None
        if arr.ndim != 0:
            raise ValueError(
                f"config.{field}: expected a scalar, got shape {arr.shape} "
                "(vmap over train_projections to sweep it)"
            )
        v = float(arr)
        if not (v > low or (low_ok and v == low)) or not v <= high or math.isnan(v):
            bracket = "[" if low_ok else "("
            raise ValueError(
                f"config.{field}: expected a value in {bracket}{low}, {high}], got {v}"
            )
