"""LAPACK calls that stay unbatched under ``vmap`` on CPU.

jaxlib 0.10's CPU LAPACK kernels split a batched call (what ``vmap`` makes of an SVD or an
eigensolver) over XLA's intra-op thread pool and block until the pieces are done. When the call
itself runs on a pool thread, next to other work of the same program, every thread can end up
waiting: the program deadlocks (seen in vmapped SPACE training sweeps, 4 runs out of 4).

Each function here is one unbatched LAPACK call wrapped in :func:`jax.custom_batching.custom_vmap`.
Batched, it becomes, on CPU, a ``lax.map`` of the unbatched call (each item is one LAPACK call
on the calling thread: the same kernels, so the results equal the per-item loop bit for bit);
on other platforms the batched solver (cuSOLVER's batched kernels on GPUs). The choice is made
when the program is lowered for its platform (:func:`jax.lax.platform_dependent`), not from the
default backend. An outer ``vmap`` meets the rule again, so nested ``vmap`` stays safe too.

``custom_vmap`` has no reverse-mode derivative; :mod:`space_jax.linalg` wraps these in
``custom_jvp`` rules made of matrix products only, so every derivative of the public functions
(``jvp``, ``grad``, ``vmap`` of either, either of ``vmap``) is defined.

A measured alternative, a cyclic Jacobi eigensolver written in XLA operations (it batches as
matrix products do), was 10x slower than the sequential LAPACK calls on CPU (16 matrices of
8 x 8: 3.8 ms against 0.34 ms; 16 x 16: 7.4 ms against 1.3 ms): XLA's per-operation cost on CPU,
times ``n - 1`` rotation rounds per sweep and several sweeps, exceeds one LAPACK call per matrix.
Splitting the sequential loop in two or four independent loops, or unrolling it, did not help
either.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jax.custom_batching import custom_vmap

try:  # the CPU LAPACK targets' names (jax's own lowering uses the same module)
    from jaxlib import lapack as _jaxlib_lapack
except ImportError:  # pragma: no cover - a jaxlib without it: eigenvalues through eigh
    _jaxlib_lapack = None

from space_jax._host_malloc import ensure_host_malloc
from space_jax._lapack_threads import ensure_lapack_threads

__all__ = ["eigh", "eigvalsh", "lu_factor", "lu_solve", "solve_triangular", "svd"]


def _half_in_float32(fn: Callable) -> Callable:
    """``fn`` computed in float32 for float16/bfloat16 arguments (LAPACK has no half-precision
    kernels), its floating results cast back to the arguments' dtype."""
    half = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))

    @functools.wraps(fn)
    def wrapped(*args):
        dtype = next((jnp.dtype(a.dtype) for a in args if jnp.dtype(a.dtype) in half), None)
        if dtype is None:
            return fn(*args)
        out = fn(*(a.astype(jnp.float32) if jnp.dtype(a.dtype) in half else a for a in args))
        return jax.tree_util.tree_map(
            lambda o: o.astype(dtype) if jnp.issubdtype(o.dtype, jnp.floating) else o, out
        )

    return wrapped


def _batch_safe(fn: Callable) -> Callable:
    """``fn`` (unbatched, array arguments only) with the batching rule described above."""
    ensure_lapack_threads()  # the first decomposition built sets LAPACK to one thread
    ensure_host_malloc()  # and lets malloc keep large buffers (space_jax._host_malloc)
    fn = _half_in_float32(fn)
    f = custom_vmap(fn)

    @f.def_vmap
    def rule(axis_size, in_batched, *args):
        del axis_size
        in_axes = tuple(0 if b else None for b in in_batched)
        mapped = [a for a, b in zip(args, in_batched, strict=True) if b]

        def merge(items):
            it = iter(items)
            return [next(it) if b else a for a, b in zip(args, in_batched, strict=True)]

        def sequential(*mapped):
            # ``f`` (not ``fn``) in the body: an enclosing vmap batches this loop, and its rule
            # turns the batched body into one more loop instead of a batched LAPACK call.
            return jax.lax.map(lambda items: f(*merge(items)), tuple(mapped))

        def batched(*mapped):
            return jax.vmap(fn, in_axes=in_axes)(*merge(mapped))

        out = jax.lax.platform_dependent(*mapped, cpu=sequential, default=batched)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return f


@functools.cache
def _eigh_fn() -> Callable:
    def fn(a):
        v, w = jax.lax.linalg.eigh(a, symmetrize_input=False)
        return w, v

    return _batch_safe(fn)


def eigh(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(w, v)``, ascending eigenvalues and eigenvectors of a symmetric ``(n, n)`` matrix
    (not symmetrised here)."""
    return _eigh_fn()(a)


def _eigvalsh_cpu(a: jax.Array) -> jax.Array:
    """LAPACK's ``?syevd`` / ``?heevd`` without eigenvectors (``jobz='N'``): the tridiagonal
    reduction and its eigenvalues only, a fraction of the full decomposition's cost. jaxlib's
    ``eigh`` always asks for the vectors, so the FFI target is called here directly. The
    matrix goes in row-major, which LAPACK reads as its transpose: for a symmetric (Hermitian)
    input that is the same matrix (the conjugate), with the same eigenvalues."""
    n = a.shape[-1]
    kind = "he" if jnp.iscomplexobj(a) else "sy"
    target = _jaxlib_lapack.prepare_lapack_call(f"{kind}evd_ffi", np.dtype(a.dtype))
    real = jnp.finfo(a.dtype).dtype
    call = jax.ffi.ffi_call(
        target,
        (
            jax.ShapeDtypeStruct(a.shape, a.dtype),
            jax.ShapeDtypeStruct((n,), real),
            jax.ShapeDtypeStruct((), jnp.int32),
        ),
        input_output_aliases={0: 0},
        vmap_method="sequential",
    )
    _, w, info = call(a, mode=np.uint8(ord("N")), uplo=np.uint8(ord("L")))
    return jnp.where(info == 0, w, jnp.nan)  # as jaxlib's eigh reports a failure


@functools.cache
def _eigvalsh_fn() -> Callable:
    def fn(a):
        if a.shape[-1] == 0 or _jaxlib_lapack is None:
            return jax.lax.linalg.eigh(a, symmetrize_input=False)[1]
        return jax.lax.platform_dependent(
            a,
            cpu=_eigvalsh_cpu,
            default=lambda a: jax.lax.linalg.eigh(a, symmetrize_input=False)[1],
        )

    return _batch_safe(fn)


def eigvalsh(a: jax.Array) -> jax.Array:
    """Ascending eigenvalues of a symmetric ``(n, n)`` matrix (not symmetrised here); on CPU
    without computing eigenvectors."""
    return _eigvalsh_fn()(a)


@functools.cache
def _svd_fn(full_matrices: bool, compute_uv: bool) -> Callable:
    def fn(a):
        out = jnp.linalg.svd(a, full_matrices=full_matrices, compute_uv=compute_uv)
        return tuple(out) if compute_uv else out

    return _batch_safe(fn)


def svd(a: jax.Array, *, full_matrices: bool = False, compute_uv: bool = True):
    """``jnp.linalg.svd`` of one ``(m, n)`` matrix: ``(u, s, vh)`` or ``s``."""
    return _svd_fn(bool(full_matrices), bool(compute_uv))(a)


@functools.cache
def _qr_fn() -> Callable:
    return _batch_safe(lambda a: tuple(jnp.linalg.qr(a, mode="reduced")))


def qr(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reduced ``(q, r)`` of one ``(m, n)`` matrix."""
    return _qr_fn()(a)


@functools.cache
def _solve_triangular_fn(lower: bool) -> Callable:
    return _batch_safe(lambda a, b: jsl.solve_triangular(a, b, lower=lower))


def solve_triangular(a: jax.Array, b: jax.Array, *, lower: bool) -> jax.Array:
    """``x`` with ``a @ x = b`` for one triangular ``(n, n)`` matrix ``a``."""
    return _solve_triangular_fn(bool(lower))(a, b)


@functools.cache
def _lu_factor_fn() -> Callable:
    return _batch_safe(lambda a: tuple(jsl.lu_factor(a)))


def lu_factor(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(lu, pivots)`` of one square matrix, as :func:`jax.scipy.linalg.lu_factor`."""
    return _lu_factor_fn()(a)


@functools.cache
def _lu_solve_fn(trans: int) -> Callable:
    return _batch_safe(lambda lu, piv, b: jsl.lu_solve((lu, piv), b, trans=trans))


def lu_solve(lu: jax.Array, piv: jax.Array, b: jax.Array, *, trans: int = 0) -> jax.Array:
    """``x`` with ``a @ x = b`` (``trans=0``) or ``a.T @ x = b`` (``1``) from :func:`lu_factor`."""
    return _lu_solve_fn(int(trans))(lu, piv, b)
