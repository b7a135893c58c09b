"""spacelearn's README training loop, runnable, through space_torch_bridge (a drop-in)."""

import torch
from torch import nn

from space_torch_bridge import combined_loss, solve_dims, solve_subspaces
from space_torch_bridge.data import input_to_quantity
from space_torch_bridge.optim import minimal_latent_dim

torch.manual_seed(0)
x = torch.linspace(0, 3.14, 8)
pairs = [(1, 0), (2, 1), (3, 2)]
modes = torch.stack([torch.outer(torch.sin(i * x), torch.cos(j * x)) for i, j in pairs])
samples = (torch.randn(100, 3) @ modes.flatten(1)).view(100, 1, 8, 8)


def field(samples):  # quantity A: (B, 1, 8, 8)
    return samples


def column_sums(samples):  # quantity B: (B, 8)
    return samples.sum(dim=(-3, -2))


dims = solve_dims(
    {"A": field(samples), "B": column_sums(samples)},
    max_bins=10,
    bin_thresholds=0.80,
    k_thresholds={"A": 0.90, "B": 0.85},
    k_per_quantity=True,
)
N, K = next(iter(dims.values()))[0], {q: k for q, (_, k) in dims.items()}
pool_helper = input_to_quantity(N, "avg", A=field, B=column_sums)
D = minimal_latent_dim(K, free_frac=0.10)
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, D))
optimizer, W_prev = torch.optim.Adam(model.parameters(), lr=1e-2), None
for epoch in range(4):
    if epoch % 2 == 0:  # refresh the subspaces
        with torch.no_grad():
            space = solve_subspaces(model(samples), pool_helper(samples=samples), k=K)
        W, A = space.W, space.A
        W_prev = W_prev or {q: w.clone() for q, w in W.items()}
    for batch in samples.split(25):
        loss = combined_loss(model(batch), W, A, pool_helper(samples=batch), W_prev)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    W_prev = {q: w.clone() for q, w in W.items()}
print(f"final SPACE loss {loss.item():.4f} (latent dim {D}, subspace sizes {K})")
