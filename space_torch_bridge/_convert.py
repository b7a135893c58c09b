"""Moving tensors between PyTorch and JAX through DLPack.

The bridge's one conversion module. Tensors are shared, not copied, whenever XLA can read them as
they are; otherwise exactly one copy makes them shareable, so the JAX array never reads memory
differently from how torch interprets it:

========================================  ==============================================
tensor                                    what ``to_jax`` does
========================================  ==============================================
dense, compact layout, 64-byte aligned,   shared through DLPack (zero copies), 0-dim and
float32/float64/ints                      empty tensors included; a permuted layout (a
                                          transpose) is shared too, and XLA lays it out
                                          inside the call if its code wants row-major
sliced with steps / overlapping strides   one copy into a contiguous tensor
storage offset not 64-byte aligned        one copy (XLA's CPU client wants 64-byte
                                          alignment and would otherwise copy on its own)
negative or conjugate bit (lazy views)    one copy that resolves the bit (DLPack has no
                                          such flag: sharing would silently read the
                                          un-negated values)
pinned host memory                        one copy into pageable memory
sparse or mkldnn layout                   one copy into a dense tensor
float16 / bfloat16                        one copy into float32 (the bridge computes in
                                          float32 and casts results back)
========================================  ==============================================

Inside the bridge's ops, :func:`to_jax_argument` hands a row-major CPU tensor to the jitted call
as a NumPy view of its memory instead of a DLPack capsule: ``jax.jit`` places an aligned NumPy
argument on the CPU without a copy, as it does a DLPack import, and costs about 5 us per tensor
where the import costs 30 (a loss call takes ~10 tensors). A misaligned one goes the same way and
JAX makes the one copy (a ``memcpy`` on the calling thread): torch's ``copy_`` would wake
torch's OpenMP workers, whose spinning slows the XLA call that follows on a small machine.

float64 needs JAX's x64 mode, which JAX otherwise answers by silently truncating to float32. The
bridge never turns x64 on globally: :func:`precision_scope` enables it, thread-locally, around
the conversion and the computation only, and :func:`to_jax` refuses float64 outside such a
scope instead of truncating.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.dlpack
import jax.numpy as jnp
import numpy as np
import torch

__all__ = [
    "compute_dtype",
    "jax_dtype",
    "precision_scope",
    "result_dtype",
    "shareable",
    "to_jax",
    "to_jax_argument",
    "to_torch",
    "tree_to_jax",
    "tree_to_torch",
]

# XLA's CPU client shares host buffers only when they are aligned to this many bytes (it copies
# misaligned ones on its own); to_jax makes the one copy itself, so that the array it returns
# never aliases misaligned memory (to_jax_argument leaves that copy to JAX, see above).
_XLA_ALIGNMENT = 64

_HALF_DTYPES = (torch.float16, torch.bfloat16)
# Dtypes JAX silently narrows to 32 bits unless x64 mode is on.
_X64_DTYPES = (torch.float64, torch.int64, torch.uint64)

_CUDA_JAX_HINT = (
    "Install a CUDA build of JAX next to the CUDA PyTorch, matching its CUDA major version, e.g. "
    '`pip install -U "jax[cuda12]"` (see https://docs.jax.dev/en/latest/installation.html), '
    "or move the tensors to the CPU with `.cpu()`."
)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the bridge computes in for a tensor of ``dtype``: halves widen to float32."""
    return torch.float32 if dtype in _HALF_DTYPES else dtype


def result_dtype(tensors) -> torch.dtype:
    """The dtype torch's type promotion gives the floating tensors in ``tensors``."""
    dtypes = {t.dtype for t in tensors if t.is_floating_point()}
    if len(dtypes) == 1:
        return dtypes.pop()
    if not dtypes:
        return torch.get_default_dtype()
    return functools.reduce(torch.promote_types, dtypes)


@contextlib.contextmanager
def precision_scope(*tensors: torch.Tensor) -> Iterator[None]:
    """Enables JAX's x64 mode for the enclosed block when any of ``tensors`` is 64-bit.

    ``jax.enable_x64`` is a thread-local context: ``jax.config.jax_enable_x64`` and every other
    thread are untouched, and leaving the block restores the previous state.
    """
    if any(isinstance(t, torch.Tensor) and t.dtype in _X64_DTYPES for t in tensors):
        with jax.enable_x64(True):
            yield
    else:
        yield


def _is_compact(t: torch.Tensor) -> bool:
    """Whether the strides describe a dense buffer in some dimension order (what XLA accepts)."""
    dims = sorted(
        ((stride, size) for size, stride in zip(t.shape, t.stride(), strict=True) if size != 1),
        reverse=True,
    )
    expected = 1
    for stride, size in reversed(dims):
        if stride != expected:
            return False
        expected *= size
    return True


def _copy_reason(t: torch.Tensor, *, alignment: bool = True) -> str | None:
    """Why ``t`` cannot be handed to XLA as it is, or None when it can (``alignment=False``:
    a misaligned data pointer does not count)."""
    if t.layout != torch.strided:
        return f"layout {t.layout}"
    if t.dtype in _HALF_DTYPES:
        return f"{t.dtype} is computed in float32"
    if t.is_neg() or t.is_conj():
        return "lazy negative/conjugate bit"
    if t.device.type == "cpu" and t.is_pinned():
        return "pinned memory"
    if t.numel() == 0:
        return None
    if not (t.is_contiguous() or _is_compact(t)):
        return "non-compact strides"
    if alignment and t.data_ptr() % _XLA_ALIGNMENT:
        return f"data pointer not {_XLA_ALIGNMENT}-byte aligned"
    return None


def shareable(tensor: torch.Tensor) -> torch.Tensor:
    """Returns ``tensor`` detached, or one copy of it that XLA can read in place (module doc)."""
    t = tensor.detach()
    reason = _copy_reason(t)
    if reason is None:
        return t
    if t.layout != torch.strided:
        t = t.to_dense()
        if t.dtype not in _HALF_DTYPES:
            return t
    # One fresh, contiguous, pageable buffer; copy_ resolves neg/conj bits and widens halves.
    out = torch.empty(t.shape, dtype=compute_dtype(t.dtype), device=t.device)
    return out.copy_(t)


@functools.cache
def _jax_has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def _check_device(t: torch.Tensor, name: str) -> None:
    kind = t.device.type
    if kind == "cpu":
        return
    if kind == "cuda":
        if not _jax_has_gpu():
            raise RuntimeError(
                f"{name} is on {t.device}, but this JAX has no GPU backend "
                f"(its devices: {jax.devices()}). {_CUDA_JAX_HINT}"
            )
        return
    raise ValueError(
        f"{name} is on device {t.device}; the bridge supports CPU and CUDA tensors only"
    )


_DLPACK_CPU = 1  # DLDeviceType kDLCPU


@functools.cache
def _cpu_importer() -> Callable[[torch.Tensor], jax.Array] | None:
    """jaxlib's own DLPack import for CPU tensors, or None where this jaxlib differs.

    ``jax.dlpack.from_dlpack`` spends about 25 us of its 30 us per CPU tensor asking the CPU
    device for a CUDA stream (which raises and catches UNIMPLEMENTED) and re-wrapping the
    array; a loss call imports ~10 tensors, so this is most of the bridge's overhead. For CPU
    tensors the bridge calls the function ``from_dlpack`` ends in, the same way. Anything
    unexpected (another jaxlib) falls back to the public function.
    """
    try:
        from jax._src.lib import _jax, jaxlib_extension_version

        if jaxlib_extension_version < 467:
            return None
        to_buffer = _jax.dlpack_managed_tensor_to_buffer
        device = jax.devices("cpu")[0]
        probe = torch.arange(4, dtype=torch.float32)
        array = to_buffer(probe.__dlpack__(stream=None), device, None, None, _DLPACK_CPU)
        if not isinstance(array, jax.Array) or array.unsafe_buffer_pointer() != probe.data_ptr():
            return None
    except Exception:  # any jaxlib without this entry point or signature
        return None

    def importer(t: torch.Tensor) -> jax.Array:
        return to_buffer(t.__dlpack__(stream=None), device, None, None, _DLPACK_CPU)

    return importer


def _from_dlpack(t: torch.Tensor) -> jax.Array:
    if t.device.type == "cpu":
        importer = _cpu_importer()
        if importer is not None:
            return importer(t)
    return jax.dlpack.from_dlpack(t)


def _cpu_default() -> bool:
    """Whether jit places an uncommitted (NumPy) argument on the CPU: so a call of CPU tensors
    never moves to a GPU that JAX also has."""
    return jax.config.jax_default_device is None and _default_backend() == "cpu"


@functools.cache
def _default_backend() -> str:
    return jax.default_backend()


def _checked(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """``tensor`` detached, after refusing what JAX cannot take (or would silently narrow)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    _check_device(tensor, name)
    if tensor.dtype in _X64_DTYPES and not jax.config.read("jax_enable_x64"):
        raise RuntimeError(
            f"{name}: {tensor.dtype} tensors must be converted inside "
            "space_torch_bridge._convert.precision_scope(...); outside x64 mode JAX would "
            "silently narrow them to 32 bits"
        )
    if tensor.is_complex():
        raise TypeError(f"{name}: complex tensors are not supported, got {tensor.dtype}")
    return tensor.detach()


def _prepared(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """:func:`_checked`, then made shareable (:func:`shareable`)."""
    return shareable(_checked(tensor, name))


def to_jax(tensor: torch.Tensor, *, name: str = "tensor") -> jax.Array:
    """Shares a torch tensor with JAX through DLPack (one copy only when unavoidable).

    Args:
      tensor: any strided or sparse torch tensor on the CPU or a CUDA device. It is detached, so
        a tensor that requires grad is fine (gradients are the autograd module's business).
      name: what to call the tensor in error messages (``"Y['pressure']"``).

    Returns:
      A ``jax.Array`` on the matching JAX device. Its dtype is the tensor's, except float16 and
      bfloat16, which arrive as float32. float64 must be converted inside
      :func:`precision_scope` (or with x64 already enabled).
    """
    t = _prepared(tensor, name)
    array = _from_dlpack(t)
    if array.dtype != jax_dtype(t.dtype):
        raise RuntimeError(f"{name}: DLPack gave {array.dtype} for a {t.dtype} tensor")
    return array


def to_jax_argument(tensor: torch.Tensor, *, name: str = "tensor") -> jax.Array | np.ndarray:
    """``tensor`` as an argument of a jitted call: :func:`to_jax`, except that a row-major CPU
    tensor becomes a NumPy view of its memory, which ``jax.jit`` places on the CPU without a
    copy when it is 64-byte aligned (like a DLPack import but without its per-tensor cost) and
    with one copy of its own when it is not. Same
    checks, dtypes and errors as :func:`to_jax`; only valid as a direct argument of a jitted
    function called at once (and the tensor left unchanged until its results are read).
    """
    t = _checked(tensor, name)
    # Row-major only: JAX copies a NumPy array in another layout, DLPack shares it (a transpose).
    # A misaligned one goes as it is too: JAX copies it with one memcpy on this thread, where
    # torch's copy_ would wake its OpenMP workers, whose spinning then slows the XLA call that
    # follows (at the main benchmark size: about 6 ms on a 14 ms loss, 2 cores).
    if (
        t.device.type == "cpu"
        and t.is_contiguous()
        and _cpu_default()
        and _copy_reason(t, alignment=False) is None
    ):
        return t.numpy()
    t = shareable(t)
    array = _from_dlpack(t)
    if array.dtype != jax_dtype(t.dtype):
        raise RuntimeError(f"{name}: DLPack gave {array.dtype} for a {t.dtype} tensor")
    return array


def jax_dtype(dtype: torch.dtype) -> jnp.dtype:
    """The JAX dtype of a torch dtype (same name)."""
    return jnp.dtype(str(dtype).removeprefix("torch."))


def to_torch(array: jax.Array, like: torch.Tensor) -> torch.Tensor:
    """Shares a JAX array with torch through DLPack, on ``like``'s device with ``like``'s dtype.

    The torch tensor aliases the JAX buffer (no copy) unless a cast back to ``like``'s floating
    dtype (float16/bfloat16 inputs) or a device move is needed. Non-floating arrays keep their
    dtype.
    """
    if like.device.type == "cpu" and array.__dlpack_device__()[0] == _DLPACK_CPU:
        # A CPU buffer has no stream to agree on: taking its capsule directly skips the protocol
        # negotiation in torch.from_dlpack(array) (about 10 us of its 25 per result).
        t = torch.from_dlpack(array.__dlpack__())
    else:
        t = torch.from_dlpack(array)  # hands JAX torch's current CUDA stream to wait on
    if t.device != like.device:
        t = t.to(like.device)
    if t.is_floating_point() and like.is_floating_point() and t.dtype != like.dtype:
        t = t.to(like.dtype)
    return t


def _map(tree: Any, fn: Callable[[Any, str], Any], path: str = "") -> Any:
    """Maps over the leaves of nested dicts, lists and tuples, keeping dict order (JAX's tree
    utilities sort dict keys, and the quantity order is the user's dict order)."""
    if isinstance(tree, Mapping):
        return {k: _map(v, fn, f"{path}[{k!r}]") for k, v in tree.items()}
    if isinstance(tree, tuple | list):
        children = [_map(v, fn, f"{path}[{i}]") for i, v in enumerate(tree)]
        return type(tree)(*children) if hasattr(tree, "_fields") else type(tree)(children)
    return fn(tree, path)


def tree_to_jax(tree: Any, *, name: str = "tree") -> Any:
    """:func:`to_jax` on every tensor in nested dicts, lists and tuples; other leaves stay."""
    return _map(tree, lambda x, p: to_jax(x, name=name + p) if isinstance(x, torch.Tensor) else x)


def tree_to_torch(tree: Any, like: torch.Tensor) -> Any:
    """:func:`to_torch` on every JAX array in nested dicts, lists and tuples; others stay."""
    return _map(tree, lambda x, _: to_torch(x, like) if isinstance(x, jax.Array) else x)
