"""DataLoader workers that call the bridge.

    python examples/torch_dataloader.py [--fork]

The workers pool the targets with ``space_torch_bridge.data.input_to_quantity``, so they run
JAX: they must be started with ``spawn`` (or ``forkserver``). A worker *forked* from a process
that already ran JAX cannot run JAX (it would deadlock); the bridge refuses with a
``RuntimeError`` that says so (``--fork`` shows it). Workers that only run torch code may fork
(JAX prints its fork warning; nothing else happens).
"""

import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from space_torch_bridge import combined_loss, solve_subspaces
from space_torch_bridge.data import input_to_quantity


def field(samples):  # quantity "field": (B, 1, 8, 8)
    return samples


def column_sums(samples):  # quantity "sums": (B, 8)
    return samples.sum(dim=(-3, -2))


# Module level, so that spawned workers can import it.
pooled_targets = input_to_quantity(4, "avg", field=field, sums=column_sums)


class Fields(Dataset):
    """Random 8x8 fields; each item is ``(field, {quantity: pooled target})``."""

    def __init__(self, n: int):
        self.samples = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        x = self.samples[i : i + 1]
        return x[0], {q: y[0] for q, y in pooled_targets(samples=x).items()}


def main(context: str = "spawn") -> float:
    torch.manual_seed(0)
    data = Fields(64)
    loader = DataLoader(data, batch_size=32, num_workers=1, multiprocessing_context=context)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 12))
    with torch.no_grad():
        space = solve_subspaces(model(data.samples), pooled_targets(samples=data.samples), k=3)
    W, A = space.W, space.A

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for x, Y in loader:
        loss = combined_loss(model(x), W, A, Y, None, n_dir=4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


if __name__ == "__main__":
    print(f"final SPACE loss {main('fork' if '--fork' in sys.argv else 'spawn'):.4f}")
