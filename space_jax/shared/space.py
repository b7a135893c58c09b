"""The immutable shared space, :class:`SharedSpace`: register models, train, project, save."""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .._checks import check_positive_int
from . import io
from .checks import check_input_dim
from .config import DEFAULT_CONFIG, Params, ProjectionConfig
from .training import init_projections, train_projections

__all__ = ["SharedSpace"]


@jax.jit
def _project(entry: dict, x: jax.Array) -> jax.Array:
    return ((x - entry["mean"]) / entry["scale"]) @ entry["projection"]


@jax.jit
def _retrieve(entry: dict, z: jax.Array) -> jax.Array:
    return (z @ entry["reconstruction"]) * entry["scale"] + entry["mean"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class SharedSpace:
    """A shared latent space of size ``dim`` that registered models project into and read from.

    Immutable and a pytree (``params`` are the leaves): :meth:`register` and :meth:`train` return
    new spaces. Start with ``SharedSpace(dim, seed=0)``; ``names`` and ``params`` are filled by
    :meth:`register` (``params`` as in :func:`init_projections`).

    Example::

      space = SharedSpace(8).register("image", 64).register("text", 32)
      space = space.train({"image": x_img, "text": x_txt})       # aligned rows
      x_txt_hat = space.translate("image", "text", x_img[:5])    # (5, 32)
    """

    dim: int = dataclasses.field(metadata={"static": True})
    seed: int = dataclasses.field(default=0, metadata={"static": True})
    names: tuple[str, ...] = dataclasses.field(default=(), metadata={"static": True}, kw_only=True)
    params: Params = dataclasses.field(default_factory=dict, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int | np.integer) or self.dim < 1:
            raise ValueError(f"SharedSpace: dim must be an int >= 1, got {self.dim!r}")
        check_positive_int(self.seed, "SharedSpace.seed", minimum=0)

    @property
    def input_dims(self) -> dict[str, int]:
        """Model name -> registered input size, in registration order."""
        return {m: self.params[m]["projection"].shape[0] for m in self.names}

    def register(self, name: str, input_dim: int, *, replace: bool = False) -> SharedSpace:
        """Adds a model with Xavier-uniform matrices (drawn from ``seed`` and the name).

        Args:
          name: the model's name.
          input_dim: its feature size ``n >= 1``.
          replace: re-register (fresh matrices) a name that is already registered.

        Returns:
          A new space with the model added.
        """
        n = check_input_dim(name, input_dim)
        if name in self.names and not replace:
            raise ValueError(
                f"register: model {name!r} is already registered (input_dim="
                f"{self.input_dims[name]}); pass replace=True to re-register it"
            )
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), zlib.crc32(name.encode()) >> 1)
        entry = init_projections(key, {name: n}, self.dim)[name]
        names = self.names if name in self.names else (*self.names, name)
        return dataclasses.replace(self, names=names, params={**self.params, name: entry})

    def train(
        self,
        data: Mapping[str, ArrayLike],
        config: ProjectionConfig = DEFAULT_CONFIG,
        *,
        return_history: bool = False,
    ) -> SharedSpace | tuple[SharedSpace, jax.Array]:
        """Trains the projections on aligned samples (:func:`train_projections`).

        Args:
          data: model name -> samples ``(B, n_m)``, row ``i`` of every model being sample ``i``;
            at least two registered models (others keep their matrices). NaN and infinity are
            refused.
          config: :class:`ProjectionConfig`; a ``latent_dim`` other than 0 and ``dim`` gives a
            space of that size, every model re-initialised first.
          return_history: also return the loss per epoch, ``(n_epochs,)``.

        Returns:
          The trained space (and the loss history when asked).
        """
        space = self
        if config.latent_dim not in (0, self.dim):
            space = SharedSpace(config.latent_dim, self.seed)
            for name, n in self.input_dims.items():
                space = space.register(name, n)
        params, history = train_projections(space.params, data, config)
        space = dataclasses.replace(space, params=params)
        return (space, history) if return_history else space

    def project(self, name: str, x: ArrayLike) -> jax.Array:
        """Maps features ``(n,)`` or ``(B, n)`` of model ``name`` to latents ``(d,)``/``(B, d)``.

        NaN or infinite features raise ``ValueError`` (when ``x`` is concrete).
        """
        where = f"project({name!r})"
        entry = self._entry(name)
        z = _project(entry, _vectors(x, entry["projection"].shape[0], where, "x"))
        return _finite_result(z, where)

    def retrieve(self, name: str, z: ArrayLike) -> jax.Array:
        """Maps latents ``(d,)`` or ``(B, d)`` to model ``name``'s features ``(n,)``/``(B, n)``.

        NaN or infinite latents raise ``ValueError`` (when ``z`` is concrete).
        """
        where = f"retrieve({name!r})"
        entry = self._entry(name)
        x = _retrieve(entry, _vectors(z, self.dim, where, "z", "latent"))
        return _finite_result(x, where)

    def translate(self, src: str, dst: str, x: ArrayLike) -> jax.Array:
        """Features of ``src`` ``(n_src,)``/``(B, n_src)`` as features of ``dst``: ``retrieve(dst,
        project(src, x))``. NaN or infinite features raise ``ValueError``."""
        where = f"translate({src!r}, {dst!r})"
        entry, out = self._entry(src), self._entry(dst)
        z = _project(entry, _vectors(x, entry["projection"].shape[0], where, "x"))
        return _finite_result(_retrieve(out, z), where)

    def _entry(self, name: str) -> dict:
        if name not in self.params:
            raise KeyError(
                f"model {name!r} is not registered; registered models: {list(self.names)}"
            )
        return self.params[name]

    def __repr__(self) -> str:
        return f"SharedSpace(dim={self.dim}, seed={self.seed}, models={self.input_dims})"

    # ----------------------------------------------------------------------------------------
    # Files

    def save(self, path: str | os.PathLike) -> None:
        """Writes the space to ``path`` atomically (an ``.npz`` with a JSON header, no pickle).

        Runs every check :meth:`load` runs first (finite parameters of a float dtype, shapes,
        positive scales): a space that could not be loaded raises ``ValueError`` and leaves
        ``path`` untouched. The file is written to a temporary file in the same folder, read
        back, and renamed over ``path``, so a crash leaves either the old file or the new one.
        """
        io.save(path, io.encode(self.dim, self.seed, self.names, self.params))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SharedSpace:
        """Reads a space written by :meth:`save`; anything else raises ``ValueError`` naming
        ``path`` (``FileNotFoundError`` when nothing is there)."""
        contents = io.load(path)
        params = {
            m: {field: jnp.asarray(a) for field, a in entry.items()}
            for m, entry in contents.params.items()
        }
        space = cls(contents.dim, contents.seed)
        return dataclasses.replace(space, names=contents.names, params=params)


def _vectors(x: ArrayLike, n: int, where: str, arg: str, what: str = "features") -> jax.Array:
    """``x`` as an array of ``(n,)`` or ``(B, n)`` real, finite values (finiteness is checked
    when ``x`` is concrete, not under ``jit``)."""
    x = jnp.asarray(x)
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise TypeError(f"{where}: expected real {what} {arg}, got dtype {x.dtype}")
    if x.ndim not in (1, 2) or x.shape[-1] != n:
        raise ValueError(
            f"{where}: expected {what} of shape ({n},) or (B, {n}) for {arg}, got {x.shape}"
        )
    if not isinstance(x, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{where}: {arg} ({what}) contains NaN or infinity")
    return x


def _finite_result(y: jax.Array, where: str) -> jax.Array:
    if not isinstance(y, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(y))):
        raise ValueError(
            f"{where}: the result overflows {y.dtype} (the input is too large for this space)"
        )
    return y
