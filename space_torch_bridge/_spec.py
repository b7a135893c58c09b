"""What a bridge call is, as a string: the spec every custom op carries.

A torch custom op takes tensors, lists of tensors and scalars, not dicts, so a call is split in
two: its tensors, flattened into one list (dicts keep their order: it is the quantity order),
and a *spec*, the ``repr`` of a tuple of Python literals that says everything else:

``(label, op name, argument names, input structure, output structure, static keywords,
takes a key)``

A structure is ``"T"`` (a tensor), ``None``, ``("dict", keys, children)``, ``("tuple",
children)`` or ``("list", children)``. Static keywords are ``(name, value)`` pairs; ``repr``
keeps their types apart (``True``, ``1`` and ``1.0`` are different specs, so different cache
entries). The spec is built by plain Python that ``torch.compile`` (dynamo) folds into a constant,
and read back with :func:`ast.literal_eval`, once per spec, where the op runs.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "Spec",
    "describe",
    "leaf_names",
    "parse",
    "register_function",
    "structure_of",
    "unflatten",
]

# op name -> the JAX function it runs (module-level functions, registered at import).
_FUNCTIONS: dict[str, Callable] = {}


def register_function(op: str, fn: Callable) -> None:
    """Binds the op name ``op`` to ``fn``, for the life of the process."""
    known = _FUNCTIONS.setdefault(op, fn)
    if known is not fn:
        raise ValueError(f"space_torch_bridge: op {op!r} already runs {known!r}")


def describe(arg: Any, name: str, label: str, leaves: list, names: list) -> Any:
    """The structure of one argument; appends its tensors to ``leaves`` and their names.

    Arguments are tensors, None, or dicts, tuples and lists of them; anything else (a NumPy
    array, a list of floats) is refused here rather than failing somewhere inside JAX.
    """
    if isinstance(arg, torch.Tensor):
        leaves.append(arg)
        names.append(name)
        return "T"
    if arg is None:
        return None
    if isinstance(arg, dict):
        keys = tuple(arg)
        for k in keys:
            if not isinstance(k, str | int):
                raise TypeError(f"{label}: the keys of {name} must be str, got {k!r}")
        children = tuple(
            describe(v, f"{name}[{k!r}]", label, leaves, names) for k, v in arg.items()
        )
        return ("dict", keys, children)
    if isinstance(arg, tuple | list):
        kind = "list" if isinstance(arg, list) else "tuple"
        children = tuple(
            describe(v, f"{name}[{i}]", label, leaves, names) for i, v in enumerate(arg)
        )
        return (kind, children)
    raise TypeError(f"{label}: {name} must be a torch.Tensor, got {type(arg).__name__}")


def unflatten(structure: Any, leaves: Iterator) -> Any:
    """The nest of dicts, tuples and lists that ``structure`` describes, filled from ``leaves``."""
    if structure == "T":
        return next(leaves)
    if structure is None:
        return None
    if structure[0] == "dict":
        return {k: unflatten(s, leaves) for k, s in zip(structure[1], structure[2], strict=True)}
    children = [unflatten(s, leaves) for s in structure[1]]
    return children if structure[0] == "list" else tuple(children)


def select(tree: Any, structure: Any, out: list) -> None:
    """Appends the leaves of ``tree`` that ``structure`` names to ``out``, by key and index
    (so a function may build its result dicts in any order)."""
    if structure == "T":
        out.append(tree)
    elif structure is None:
        if tree is not None:
            raise TypeError(f"expected None, got {type(tree).__name__}")
    elif structure[0] == "dict":
        if not isinstance(tree, Mapping) or set(tree) != set(structure[1]):
            raise TypeError(f"expected a dict with keys {structure[1]}, got {tree!r}")
        for k, s in zip(structure[1], structure[2], strict=True):
            select(tree[k], s, out)
    else:
        if not isinstance(tree, tuple | list) or len(tree) != len(structure[1]):
            raise TypeError(f"expected a sequence of {len(structure[1])}, got {type(tree)}")
        for t, s in zip(tree, structure[1], strict=True):
            select(t, s, out)


def structure_of(tree: Any) -> Any:
    """The structure of a result built of dicts, tuples, lists and arrays (any non-container
    leaf is an array)."""
    if tree is None:
        return None
    if isinstance(tree, Mapping):
        return ("dict", tuple(tree), tuple(structure_of(v) for v in tree.values()))
    if isinstance(tree, tuple | list):
        kind = "list" if isinstance(tree, list) else "tuple"
        return (kind, tuple(structure_of(v) for v in tree))
    return "T"


def leaf_names(structure: Any, name: str) -> list[str]:
    """The user-facing names of the tensors in one argument (``Y['field']``)."""
    if structure == "T":
        return [name]
    if structure is None:
        return []
    if structure[0] == "dict":
        pairs = zip(structure[1], structure[2], strict=True)
        return [n for k, s in pairs for n in leaf_names(s, f"{name}[{k!r}]")]
    return [n for i, s in enumerate(structure[1]) for n in leaf_names(s, f"{name}[{i}]")]


@dataclasses.dataclass(frozen=True)
class Spec:
    """A parsed spec: what the op runs, on what, with which static keywords."""

    text: str
    label: str  # the public function's name, for messages
    op: str  # the custom op's name, which names the JAX function too
    fn: Callable
    arg_names: tuple[str, ...]
    inputs: Any  # a ("tuple", ...) structure of the positional arguments
    output: Any  # the result's structure, or None where it is learned from the first call
    static: Mapping[str, Any]
    takes_key: bool

    @functools.cached_property
    def leaf_names(self) -> list[str]:
        return [
            n for s, a in zip(self.inputs[1], self.arg_names, strict=True) for n in leaf_names(s, a)
        ]

    def arguments(self, leaves: Sequence) -> list:
        """The positional arguments rebuilt from the leaves (plain dicts in the user's order)."""
        return list(unflatten(self.inputs, iter(leaves)))


def build(
    label: str,
    op: str,
    arg_names: Sequence[str],
    inputs: Any,
    output: Any,
    static: Sequence[tuple[str, Any]],
    takes_key: bool,
) -> str:
    """The spec string (plain Python on constants: dynamo folds it)."""
    return repr((label, op, tuple(arg_names), inputs, output, tuple(static), takes_key))


@functools.cache
def parse(text: str) -> Spec:
    """Reads a spec back (once per distinct spec)."""
    label, op, arg_names, inputs, output, static, takes_key = ast.literal_eval(text)
    try:
        fn = _FUNCTIONS[op]
    except KeyError:
        raise RuntimeError(f"space_torch_bridge: no function registered for {op!r}") from None
    return Spec(text, label, op, fn, arg_names, inputs, output, dict(static), takes_key)
