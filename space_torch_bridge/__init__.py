"""spacelearn 0.1.0's API for PyTorch code, computed by ``space_jax``.

Replace ``import spacelearn`` with ``import space_torch_bridge as spacelearn``: the same module
paths, names, signatures, defaults, return types and shapes; torch tensors in and out, shared
with JAX through DLPack; torch autograd through the losses. Every function that returns tensors
is a torch custom op (``torch.ops.space_torch_bridge.*``), so ``torch.compile`` traces training
steps that call it, ``fullgraph=True`` included. Importing the bridge changes no JAX or torch
configuration (float64 inputs enable x64 only around their own computation). The one
process-wide setting ``space_jax`` makes, on its first decomposition, is one thread for SciPy's
LAPACK, whose spinning workers would otherwise slow torch's next steps
(``SPACE_JAX_LAPACK_THREADS``, see :mod:`space_jax._lapack_threads`).

Two process-level facts (README, "PyTorch"): DataLoader workers that call the bridge need the
``spawn`` (or ``forkserver``) start method, since JAX cannot run in a process forked after it
started (the bridge raises instead of hanging); and on few cores ``OMP_WAIT_POLICY=PASSIVE``,
set before torch is imported, stops torch's OpenMP workers from spin-waiting on the cores the
bridge's XLA call needs, but can also slow torch's own passes (on 2 cores the whole training
step of the README's benchmark was 1.6-1.8x slower with it at the small size, and at the main
size slower in one run, the same in another and 13% faster in a third), so the bridge leaves it
to you.
"""

import logging

from space_torch_bridge import data, loss, optim, settings, util
from space_torch_bridge._space import (
    Space,
    principal_directions,
    solve_dims,
    solve_subspaces,
    subspaces,
)
from space_torch_bridge.loss import combined_loss

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Space",
    "combined_loss",
    "data",
    "loss",
    "optim",
    "principal_directions",
    "settings",
    "solve_dims",
    "solve_subspaces",
    "subspaces",
    "util",
]
