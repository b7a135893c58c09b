"""The file format of a shared space: an ``.npz`` archive with a JSON header, never a pickle.

Entries: ``header`` (UTF-8 JSON as ``uint8``: format, version, ``dim``, ``seed`` and the models'
names and input sizes in registration order) and ``model{i}.{field}`` for each model ``i`` and
field of :data:`~space_jax.shared.config.FIELDS`. :func:`save` runs every check :func:`load`
runs before it replaces anything, then reads the written file back before renaming it over the
target, so a file that fails to load is never written in place of a good one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from .config import FIELDS

__all__ = ["FORMAT", "FORMAT_VERSION", "Contents", "decode", "encode", "load", "save"]

FORMAT = "space_jax.SharedSpace"
FORMAT_VERSION = 1
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"


class Contents(NamedTuple):
    """What a file holds: the space's ``dim``, ``seed``, model ``names`` (registration order)
    and ``params`` (name -> field -> NumPy array)."""

    dim: int
    seed: int
    names: tuple[str, ...]
    params: dict[str, dict[str, np.ndarray]]


def encode(dim: int, seed: int, names: tuple[str, ...], params: Mapping) -> dict[str, np.ndarray]:
    """The archive's entries for a space (not checked: :func:`decode` checks)."""
    models = [{"name": m, "input_dim": int(np.shape(params[m]["projection"])[0])} for m in names]
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dim": dim,
        "seed": seed,
        "models": models,
    }
    arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    for i, m in enumerate(names):
        for field in FIELDS:
            arrays[f"model{i}.{field}"] = np.asarray(params[m][field])
    return arrays


def decode(where: str, arrays: Mapping[str, np.ndarray]) -> Contents:
    """Checks an archive's entries and returns its contents; ``ValueError`` prefixed by
    ``where`` for anything :func:`encode` would not have written from a valid space.

    The parameters must have the shapes of the header's sizes, a float dtype (float16, 32 or
    64), finite values and a positive ``scale``.
    """
    arrays = dict(arrays)
    header = _read_header(where, arrays)
    dim = header["dim"]
    params = {}
    for i, model in enumerate(header["models"]):
        name, n = model["name"], model["input_dim"]
        shapes = {"projection": (n, dim), "reconstruction": (dim, n)}
        entry = {}
        for field in FIELDS:
            a = arrays.pop(f"model{i}.{field}", None)
            expected = shapes.get(field, (n,))
            if a is None or a.shape != expected or a.dtype not in _FLOATS:
                got = "nothing" if a is None else f"{a.dtype} {a.shape}"
                raise ValueError(
                    f"{where}: model {name!r}: expected {field} of shape {expected} and dtype "
                    f"float16, float32 or float64, got {got}"
                )
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{where}: model {name!r}: {field} contains NaN or infinity")
            if field == "scale" and not np.all(a > 0):
                raise ValueError(f"{where}: model {name!r}: scale must be positive")
            entry[field] = a
        params[name] = entry
    if arrays:
        raise ValueError(f"{where}: unexpected entries {sorted(arrays)}")
    names = tuple(m["name"] for m in header["models"])
    return Contents(dim, header["seed"], names, params)


def save(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes entries from :func:`encode` to ``path`` atomically, refusing unloadable ones.

    The entries are checked as :func:`load` checks them (``ValueError``, ``path`` untouched),
    written to a temporary file in the same folder, read back and checked again, and only then
    renamed over ``path``: a crash or a failed check leaves the old file as it was.
    """
    path = os.fspath(path)
    decode(f"SharedSpace.save({path!r}): nothing written", arrays)
    folder, base = os.path.split(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"SharedSpace.save: {path} is a folder; give a file name")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        _read(tmp, f"SharedSpace.save({path!r}): the written file did not read back")
        # mkstemp makes the file private (0600); keep the mode of a file being replaced.
        os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load(path: str | os.PathLike) -> Contents:
    """Reads a file written by :func:`save`; anything else raises ``ValueError`` naming it.

    ``FileNotFoundError`` when there is no file at ``path``.
    """
    path = os.fspath(path)
    return _read(path, path)


def _read(path: str, where: str) -> Contents:
    with open(path, "rb") as f:
        magic = f.read(len(_NPY_MAGIC))
    if magic == _NPY_MAGIC:
        raise ValueError(
            f"{where}: not a readable SharedSpace file (a single NumPy .npy array, not an .npz "
            "archive written by SharedSpace.save)"
        )
    if magic[: len(_ZIP_MAGIC)] != _ZIP_MAGIC:
        raise ValueError(
            f"{where}: not a readable SharedSpace file (not an .npz archive written by "
            "SharedSpace.save)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as exc:
        # NumPy's message for object arrays proposes unpickling, which a space never needs.
        reason = "it holds Python objects" if "pickle" in str(exc) else str(exc)
        raise ValueError(f"{where}: not a readable SharedSpace file ({reason})") from None
    except (
        OSError,
        EOFError,
        KeyError,
        NotImplementedError,
        RuntimeError,
        zipfile.BadZipFile,
        zlib.error,
    ) as exc:
        raise ValueError(f"{where}: not a readable SharedSpace file ({exc})") from exc
    return decode(where, arrays)


def _read_header(where: str, arrays: dict) -> dict:
    raw = arrays.pop("header", None)
    try:
        if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError("no header")
        header = json.loads(raw.tobytes().decode())
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError("foreign header")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{where}: not a SharedSpace file ({exc})") from None
    version = header.get("version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{where}: SharedSpace file format version {version!r}; this space_jax reads "
            f"version {FORMAT_VERSION}"
        )
    models = header.get("models")
    ok = (
        _is_int(header.get("dim"), 1)
        and _is_int(header.get("seed"), 0)
        and isinstance(models, list)
        and all(
            isinstance(m, dict)
            and isinstance(m.get("name"), str)
            and m["name"]
            and _is_int(m.get("input_dim"), 1)
            for m in models
        )
        and len({m["name"] for m in models}) == len(models)
    )
    if not ok:
        raise ValueError(f"{where}: malformed SharedSpace header {header}")
    return header


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
