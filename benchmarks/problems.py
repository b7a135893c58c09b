"""Problem sizes and their synthetic inputs (float32, NumPy; converted per library)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SIZES", "TINY", "Problem", "Size", "make_problem", "sweep_sizes"]


@dataclass(frozen=True)
class Size:
    """Batch ``B``, latent dim ``D``, ``Q`` quantities with ``k`` basis rows and ``m`` targets."""

    name: str
    B: int
    D: int
    Q: int
    k: int
    m: int

    @property
    def bins(self) -> int:
        """Pooled grid side: each quantity is an ``(H, H)`` field pooled to ``(bins, bins)``."""
        return max(round(math.sqrt(self.m)), 1)

    @property
    def field_side(self) -> int:
        """Side ``H`` of the unpooled ``(B, 1, H, H)`` fields (twice the pooled side)."""
        return 2 * self.bins

    def as_dict(self) -> dict:
        return {"name": self.name, "B": self.B, "D": self.D, "Q": self.Q, "k": self.k, "m": self.m}


SIZES = {
    "small": Size("small", 512, 64, 2, 8, 16),
    "main": Size("main", 4096, 256, 4, 16, 64),
    "large": Size("large", 16384, 512, 8, 16, 64),
}

# For the bridge's fixed overhead: so small that the arithmetic costs next to nothing.
TINY = Size("tiny", 16, 8, 2, 2, 2)


def sweep_sizes(base: Size, *, batches=(), dims=()) -> dict[str, list[Size]]:
    """Sizes that vary ``B`` (others as ``base``) and ``D``; dims below ``Q * k`` are dropped."""
    return {
        "B": [Size(f"B={b}", b, base.D, base.Q, base.k, base.m) for b in batches],
        "D": [
            Size(f"D={d}", base.B, d, base.Q, base.k, base.m) for d in dims if d >= base.Q * base.k
        ],
    }


@dataclass
class Problem:
    """Inputs of one size, all float32 NumPy arrays.

    ``Z`` latents ``(B, D)`` (not centered, with a decaying spectrum); ``W`` mutually orthogonal
    orthonormal bases ``(k, D)`` (as the reference's isotropy loss assumes); ``W_prev`` a
    slightly perturbed copy; ``A`` decoders ``(k, m)``; ``Y`` flat targets ``(B, m)`` and
    ``fields`` ``(B, 1, H, H)`` (``H`` twice the pooled side, for pooling and sizing), both a
    few modes driven linearly by ``Z`` plus noise.
    """

    size: Size
    Z: np.ndarray
    W: dict[str, np.ndarray]
    W_prev: dict[str, np.ndarray]
    A: dict[str, np.ndarray]
    Y: dict[str, np.ndarray]
    fields: dict[str, np.ndarray]


def make_problem(size: Size, seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)
    B, D, Q, k, m = size.B, size.D, size.Q, size.k, size.m
    if Q * k > D:
        raise ValueError(f"size {size.name}: Q * k = {Q * k} exceeds D = {D}")
    Z = rng.normal(size=(B, D)) * np.linspace(2.0, 0.5, D) + rng.normal(size=D)
    zc = Z - Z.mean(0)
    basis, _ = np.linalg.qr(rng.normal(size=(D, Q * k)))
    names = [f"q{i:02d}" for i in range(Q)]  # zero-padded: sorted order == dict order
    W, W_prev, A, Y, fields = {}, {}, {}, {}, {}
    side = size.field_side
    for i, q in enumerate(names):
        W[q] = basis[:, i * k : (i + 1) * k].T
        W_prev[q] = W[q] + 0.01 * rng.normal(size=W[q].shape)
        A[q] = rng.normal(size=(k, m)) / math.sqrt(k)
        # Targets and fields: a few modes driven by the latents, plus noise.
        drive = zc @ (rng.normal(size=(D, 4)) / math.sqrt(D))
        Y[q] = drive @ rng.normal(size=(4, m)) + 0.1 * rng.normal(size=(B, m)) + i
        field = drive @ rng.normal(size=(4, side * side)) + 0.1 * rng.normal(size=(B, side**2))
        fields[q] = field.reshape(B, 1, side, side)

    def f32(x):
        return np.ascontiguousarray(x, dtype=np.float32)

    return Problem(
        size=size,
        Z=f32(Z),
        W={q: f32(w) for q, w in W.items()},
        W_prev={q: f32(w) for q, w in W_prev.items()},
        A={q: f32(a) for q, a in A.items()},
        Y={q: f32(y) for q, y in Y.items()},
        fields={q: f32(f) for q, f in fields.items()},
    )
