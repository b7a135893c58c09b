"""The Go seed's cross-model latent space for PyTorch code: :class:`LatentSpace`.

A thin, mutable wrapper over the immutable :class:`space_jax.SharedSpace`, with the seed's
method names in Python style (``Register`` -> :meth:`LatentSpace.register`,
``TrainProjections`` -> :meth:`LatentSpace.train_projections`, ``Project``, ``Retrieve``), plus
``translate``, ``save`` and ``load``. Torch tensors in, torch tensors out on the input's device
with the input's dtype. Results carry no torch gradients: the projections are fitted by JAX.

float64 tensors are computed with JAX's x64 mode enabled around the call only (as the rest of the
bridge does); a space trained on float64 tensors keeps float64 parameters.

Its methods run JAX eagerly: inside a ``torch.compile``-d function they are a graph break
(``torch.compiler.disable``), so call them outside a ``fullgraph=True`` function.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import torch

from space_jax.shared import ProjectionConfig, SharedSpace
from space_torch_bridge._convert import precision_scope, to_jax, to_torch

__all__ = ["LatentSpace", "ProjectionConfig"]


class LatentSpace:
    """A shared latent space that several models project into and read back from.

    Example::

      space = LatentSpace(8)
      space.register("image", 64)
      space.register("text", 32)
      history = space.train_projections({"image": x_img, "text": x_txt})  # aligned rows
      z = space.project("image", x_img[:5])                   # (5, 8)
      x_txt_hat = space.translate("image", "text", x_img[:5])  # (5, 32)

    Each call reads or replaces one immutable :class:`space_jax.SharedSpace` snapshot
    (:attr:`space`); registration and training hold a lock, like the seed's mutex.
    """

    def __init__(self, dim: int, seed: int = 0) -> None:
        """Creates an empty space of size ``dim >= 1``; ``seed`` draws the Xavier matrices."""
        self._space = SharedSpace(dim, seed)
        self._lock = threading.Lock()

    @classmethod
    def from_space(cls, space: SharedSpace) -> LatentSpace:
        """Wraps an existing :class:`space_jax.SharedSpace`."""
        if not isinstance(space, SharedSpace):
            raise TypeError(f"space: expected a space_jax.SharedSpace, got {type(space)}")
        obj = cls(space.dim, space.seed)
        obj._space = space
        return obj

    @property
    def space(self) -> SharedSpace:
        """The current immutable :class:`space_jax.SharedSpace`."""
        return self._space

    @property
    def dim(self) -> int:
        """Size of the latent space."""
        return self._space.dim

    @property
    def names(self) -> tuple[str, ...]:
        """Registered model names, in registration order."""
        return self._space.names

    @property
    def input_dims(self) -> dict[str, int]:
        """Model name -> registered input size."""
        return self._space.input_dims

    def register(self, name: str, input_dim: int, *, replace: bool = False) -> None:
        """Adds a model with Xavier-uniform matrices (``replace=True`` to re-register a name)."""
        with self._lock:
            self._space = self._space.register(name, input_dim, replace=replace)

    @torch.compiler.disable
    def train_projections(
        self, data: Mapping[str, torch.Tensor], config: ProjectionConfig | None = None
    ) -> torch.Tensor:
        """Trains the projections on aligned samples.

        Args:
          data: model name -> tensor ``(B, n_m)``; row ``i`` of every model is sample ``i``.
          config: :class:`ProjectionConfig` (its defaults when ``None``).

        Returns:
          The loss per epoch ``(n_epochs,)``, on the device and in the dtype of the first tensor.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"data: expected a dict of model name -> tensor, got {type(data)}")
        tensors = list(data.values())
        with self._lock, self._scope(*tensors):
            arrays = {m: to_jax(t, name=f"data[{m!r}]") for m, t in data.items()}
            space, history = self._space.train(
                arrays, config or ProjectionConfig(), return_history=True
            )
            out = to_torch(history, like=tensors[0])
            self._space = space
        return out

    @torch.compiler.disable
    def project(self, name: str, features: torch.Tensor) -> torch.Tensor:
        """Maps features ``(n,)`` or ``(B, n)`` of model ``name`` to latents ``(d,)``/``(B, d)``."""
        space = self._space
        with self._scope(features, space=space):
            z = space.project(name, to_jax(features, name=f"features of {name!r}"))
            return to_torch(z, like=features)

    @torch.compiler.disable
    def retrieve(self, name: str, latent: torch.Tensor) -> torch.Tensor:
        """Maps latents ``(d,)`` or ``(B, d)`` to model ``name``'s features ``(n,)``/``(B, n)``."""
        space = self._space
        with self._scope(latent, space=space):
            x = space.retrieve(name, to_jax(latent, name="latent"))
            return to_torch(x, like=latent)

    @torch.compiler.disable
    def translate(self, src: str, dst: str, features: torch.Tensor) -> torch.Tensor:
        """Features of ``src`` as features of ``dst``: ``retrieve(dst, project(src, x))``."""
        space = self._space
        with self._scope(features, space=space):
            x = space.translate(src, dst, to_jax(features, name=f"features of {src!r}"))
            return to_torch(x, like=features)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the space atomically (:meth:`space_jax.SharedSpace.save`)."""
        self._space.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatentSpace:
        """Reads a space written by :meth:`save` (``ValueError`` for anything else)."""
        return cls.from_space(SharedSpace.load(path))

    def __repr__(self) -> str:
        return f"LatentSpace(dim={self.dim}, seed={self._space.seed}, models={self.input_dims})"

    def _scope(self, *tensors: torch.Tensor, space: SharedSpace | None = None):
        """x64 around the call when a tensor or the space's parameters are 64-bit."""
        space = space or self._space
        if any(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(space.params)):
            return jax.enable_x64(True)
        tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
        return precision_scope(*tensors) if tensors else contextlib.nullcontext()
