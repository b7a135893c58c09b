"""space_torch_bridge against spacelearn 0.1.0, name by name: values, shapes, dtypes, gradients.

Sizes stay below spacelearn's 100,000-element switch to a randomised SVD, so its "auto" is an
exact SVD like ours. Singular vectors are compared through sign-free quantities (projectors,
predictions, outer products).

Tolerances. float64: both sides run LAPACK/BLAS in double precision, so values and gradients
agree to ~1e-12; the contract asks for 1e-9 relative, which is what we assert. The one
exception is spacelearn's disentanglement value, which it accumulates in a float32 tensor
(``total = torch.tensor(0.0); total += ...``) even for float64 inputs: 1e-6 there.
float32: unit roundoff is 6e-8. The losses sum ~B*D = 1000 products, and the isotropy term is
computed by different exact algorithms (eigenvalues of the projected Gram matrix here, an SVD of
the residual there), whose errors relative to the largest singular value are ~eps * cond; in
these problems the leading singular values span a factor ~5, so agreement of a few 1e-6 is
expected; we assert 2e-5 on values and 1e-4 of the largest gradient entry on gradients.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import spacelearn
import torch
from conftest import problem, quiet, random_bases
from spacelearn import data as ref_data
from spacelearn import loss as ref_loss
from spacelearn import optim as ref_optim
from spacelearn import util as ref_util
from spacelearn._combined import Space as RefSpace
from spacelearn.optim._optimize_latent import _align_latent_dim as ref_align_latent_dim

import space_torch_bridge as bridge
from space_torch_bridge import data, loss, optim, settings, util

KS = {"field": 3, "energy": 2}
VALUE_TOL = {torch.float32: 2e-5, torch.float64: 1e-9}
GRAD_TOL = {torch.float32: 1e-4, torch.float64: 1e-9}


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def tdtype(request):
    return request.param


@pytest.fixture
def restore_configs():
    """Both libraries' global settings, restored after the test."""
    saved = [(c, dict(vars(c))) for c in (spacelearn.settings.config, settings.config)]
    yield
    for c, values in saved:
        vars(c).update(values)


def tensors(tree, dtype):
    if isinstance(tree, dict):
        return {k: tensors(v, dtype) for k, v in tree.items()}
    return torch.as_tensor(np.asarray(tree)).to(dtype)


def setup(dtype, seed=0):
    """Latents, targets, orthonormal bases, perturbed least-squares decoders, previous bases."""
    Z, Y = problem(seed, B=64, D=16)
    rng = np.random.default_rng(seed + 1)
    W = random_bases(rng, 16, KS)
    with quiet():
        A = ref_optim.fit_decoders(
            tensors(W, torch.float64), tensors(Z, torch.float64), tensors(Y, torch.float64)
        )
    A = {q: a.numpy() + 0.1 * rng.normal(size=a.shape) for q, a in A.items()}
    W_prev = {q: w + 0.05 * rng.normal(size=w.shape) for q, w in W.items()}
    return tuple(tensors(x, dtype) for x in (Z, W, A, Y, W_prev))


def leaf_copies(tree):
    """Fresh leaf tensors that require grad, in the same nest of tuples and dicts."""
    if isinstance(tree, dict):
        return {k: leaf_copies(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(leaf_copies(v) for v in tree)
    return tree.detach().clone().requires_grad_()


def flat(tree):
    if isinstance(tree, dict):
        tree = tuple(tree.values())
    if isinstance(tree, tuple):
        return [x for v in tree for x in flat(v)]
    return [tree]


def assert_close(got, want, tol):
    got, want = got.detach(), want.detach()
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = float(want.abs().max()) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(scale, 1e-30))


def projector(w):
    return w.double().T @ w.double()


# --- losses ------------------------------------------------------------------------------


LOSSES = {
    "alignment": (lambda m, Z, W, A, Y, Wp: m.alignment_loss(Z, W, A, Y)),
    "disentanglement": (lambda m, Z, W, A, Y, Wp: m.disentanglement_loss(Z, W)),
    "isotropy": (lambda m, Z, W, A, Y, Wp: m.isotropy_loss(Z, W, n_dir=8)),
    "isotropy_default": (lambda m, Z, W, A, Y, Wp: m.isotropy_loss(Z, W)),
    "stability": (lambda m, Z, W, A, Y, Wp: m.stability_loss(W, Wp)),
    "combined": (lambda m, Z, W, A, Y, Wp: m.combined_loss(Z, W, A, Y, Wp, n_dir=8)),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_and_their_gradients_match(name, tdtype):
    inputs = setup(tdtype)
    ours, theirs = leaf_copies(inputs), leaf_copies(inputs)
    module = {"combined": bridge}.get(name, loss)
    got = LOSSES[name](module, *ours)
    want = LOSSES[name](ref_loss if name != "combined" else spacelearn, *theirs)
    assert got.shape == () and got.dtype == tdtype
    if name == "disentanglement" and tdtype == torch.float64:
        # spacelearn accumulates this loss in a float32 tensor and returns float32.
        assert_close(got, want.double(), 1e-6)
    else:
        assert_close(got, want, VALUE_TOL[tdtype])
    got.backward()
    want.backward()
    kinked = name == "isotropy_default"  # n_dir covers the residual's zero singular values
    for a, b in zip(flat(ours), flat(theirs), strict=True):
        assert (a.grad is None) == (b.grad is None)
        if b.grad is not None and not (kinked and a.shape[0] != 64):
            assert_close(a.grad, b.grad, GRAD_TOL[tdtype])


def test_isotropy_gradient_at_zero_singular_values_is_the_central_derivative():
    """With ``n_dir`` above the residual's rank, the loss has a kink in ``W``: the zero singular
    values are |.|-like. spacelearn's gradient there depends on LAPACK's arbitrary choice of
    null-space vectors (it changes under a 1e-10 perturbation of Z); space_jax gives the mean of
    the two one-sided derivatives. Z's gradient is unaffected and matches (test above)."""
    Z, W, *_ = setup(torch.float64)
    W = leaf_copies(W)
    loss.isotropy_loss(Z, W).backward()
    g = torch.Generator().manual_seed(5)
    direction = {q: torch.randn(w.shape, dtype=w.dtype, generator=g) for q, w in W.items()}

    def at(h):  # spacelearn's own loss, differentiated numerically
        with torch.no_grad():
            return float(ref_loss.isotropy_loss(Z, {q: W[q] + h * direction[q] for q in W}))

    def central(h):
        return (at(h) - at(-h)) / (2 * h)

    # |h| * h terms (the kinks enter the mean singular value) make central differences only
    # O(h) accurate; one Richardson step makes them O(h^2).
    h = 1e-5
    extrapolated = 2 * central(h / 2) - central(h)
    ours = float(sum((W[q].grad * direction[q]).sum() for q in W))
    assert abs(ours - extrapolated) < 1e-6 * abs(extrapolated)
    one_sided = (at(h) - at(0.0)) / h
    assert abs(one_sided - extrapolated) > 1.0  # a kink indeed


def test_stability_without_previous_bases_is_a_constant_zero(tdtype):
    _, W, *_ = setup(tdtype)
    W = leaf_copies(W)
    got, want = loss.stability_loss(W, None), ref_loss.stability_loss(W, None)
    assert float(got) == float(want) == 0.0 and not got.requires_grad
    assert all(w.grad is None for w in W.values())


def test_combined_loss_with_one_quantity(tdtype):
    Z, W, A, Y, W_prev = setup(tdtype)
    one = [{"field": d["field"]} for d in (W, A, Y, W_prev)]
    got = bridge.combined_loss(Z, *one[:3], None)
    want = spacelearn.combined_loss(Z, *one[:3], None)
    assert_close(got, want, VALUE_TOL[tdtype])


# --- subspaces ---------------------------------------------------------------------------


def ref_and_bridge(fn_name, *args, module=None, **kwargs):
    with quiet():
        want = getattr(module or spacelearn, fn_name)(*args, **kwargs)
    got = getattr(bridge if module is None else _BRIDGED[module], fn_name)(*args, **kwargs)
    return got, want


_BRIDGED = {ref_optim: optim, ref_util: util, ref_data: data, ref_loss: loss}


@pytest.mark.parametrize("k", [3, {"field": 2, "energy": 3}, 40])
def test_subspaces_match(k, tdtype):
    Z, _, _, Y, _ = setup(tdtype, seed=1)
    got, want = ref_and_bridge("subspaces", Z, Y, k)
    assert list(got) == list(want)
    for q in want:
        assert got[q].shape == want[q].shape and got[q].dtype == tdtype
        assert_close(projector(got[q]), projector(want[q]), VALUE_TOL[tdtype] * 10)


def test_subspace_gradients_match():
    """spacelearn's bases are differentiable; a sign-free function of them gives the same
    gradient w.r.t. the latents and targets."""
    Z, _, _, Y, _ = setup(torch.float64, seed=2)
    mix = torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = []
    for fn in (bridge.subspaces, spacelearn.subspaces):
        Zg, Yg = leaf_copies(Z), leaf_copies(Y)
        with quiet():
            W = fn(Zg, Yg, {"field": 2, "energy": 2})
        sum(((w.T @ w) * mix).sum() for w in W.values()).backward()
        grads.append([Zg.grad, *(y.grad for y in Yg.values())])
    for a, b in zip(*grads, strict=True):
        assert_close(a, b, GRAD_TOL[torch.float64])


def test_principal_directions_match_up_to_sign(tdtype):
    Z, _, _, Y, _ = setup(tdtype, seed=3)
    got, want = ref_and_bridge("principal_directions", Z, Y)
    assert list(got) == list(want)
    for q, (w, v) in got.items():
        w_ref, v_ref = want[q]
        assert w.shape == w_ref.shape and v.shape == v_ref.shape and w.dtype == tdtype
        assert not w.requires_grad
        assert_close(torch.outer(w, v), torch.outer(w_ref, v_ref), VALUE_TOL[tdtype] * 10)


def test_solve_subspaces_gives_the_same_space(tdtype):
    Z, _, _, Y, _ = setup(tdtype, seed=4)
    got, want = ref_and_bridge("solve_subspaces", Z, Y, k={"field": 3, "energy": 2})
    assert isinstance(got, bridge.Space) and isinstance(want, RefSpace)
    assert list(got.keys()) == list(want.keys()) and len(got) == len(want)
    Zc = Z - Z.mean(0)
    for q in want:
        (w, a, v), (w_ref, a_ref, v_ref) = got[q], want[q]
        assert (w.shape, a.shape, v.shape) == (w_ref.shape, a_ref.shape, v_ref.shape)
        assert w.dtype == a.dtype == v.dtype == tdtype
        tol = VALUE_TOL[tdtype] * 10
        assert_close(projector(w), projector(w_ref), tol)
        assert_close(Zc @ w.T @ a, Zc @ w_ref.T @ a_ref, tol)  # predictions: sign-free
        assert_close(v * torch.sign(v @ v_ref), v_ref, tol)
    assert [k for k in got] == list(want) and ("field" in got) and ("nope" not in got)
    assert [x[0] for x in got.items()] == [x[0] for x in want.items()]
    assert len(got.values()) == 2 and got.W is got.W and set(got.A) == set(got.V) == set(KS)


def test_solve_subspaces_keeps_the_gradient_of_the_bases():
    Z, _, _, Y, _ = setup(torch.float64, seed=5)
    grads = []
    for module in (bridge, spacelearn):
        Zg = leaf_copies(Z)
        with quiet():
            space = module.solve_subspaces(Zg, Y, k=2)
        assert not any(a.requires_grad for a in space.A.values())
        assert not any(v.requires_grad for v in space.V.values())
        sum(projector(w)[0, 1] for w in space.W.values()).backward()
        grads.append(Zg.grad)
    assert_close(grads[0], grads[1], GRAD_TOL[torch.float64])


def test_space_refuses_disagreeing_keys():
    t = torch.zeros(1)
    with pytest.raises(ValueError, match="identical keys"):
        bridge.Space({"a": t}, {"a": t}, {"b": t})


# --- sizing ------------------------------------------------------------------------------


def coarse_targets(dtype, seed=6, N=40):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(N, 3, 1, 1))
    grid = np.linspace(0, np.pi, 12)
    modes = np.stack([np.sin((i + 1) * grid)[:, None] * np.cos(grid)[None, :] for i in range(3)])
    field = (base * modes[None]).sum(1, keepdims=True) + 0.01 * rng.normal(size=(N, 1, 12, 12))
    series = rng.normal(size=(N, 4)) @ rng.normal(size=(4, 10))
    return {"field": tensors(field, dtype), "series": tensors(series, dtype)}


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"per_quantity": True},
        {"variance_threshold": {"field": 0.99}, "default_threshold": 0.6, "per_quantity": True},
        {"max_bins": 2},
    ],
)
def test_optimal_bins_match(kwargs, tdtype):
    got, want = ref_and_bridge("optimal_bins", coarse_targets(tdtype), module=ref_optim, **kwargs)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"threshold": 0.5, "per_quantity": False},
        {"threshold": {"series": 0.99}, "default_threshold": 0.7},
    ],
)
def test_k_per_q_matches(kwargs, tdtype):
    Y = coarse_targets(tdtype)
    Y["scalar"] = Y["series"][:, 0]  # 1-D targets count as (B, 1)
    got, want = ref_and_bridge("k_per_q", Y, module=ref_optim, **kwargs)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("per_q", [(False, False), (True, True), (False, True)])
def test_solve_dims_matches(per_q, tdtype):
    pool_per_quantity, k_per_quantity = per_q
    got, want = ref_and_bridge(
        "solve_dims",
        coarse_targets(tdtype),
        8,
        0.8,
        {"field": 0.9, "series": 0.85},
        pool_per_quantity=pool_per_quantity,
        k_per_quantity=k_per_quantity,
    )
    assert got == want


@pytest.mark.parametrize(
    "args, kwargs",
    [(({"a": 4, "b": 6},), {}), ((4,), {"Q": 6, "num_heads": 8}), ((5,), {"Q": 3, "free_frac": 0})],
)
def test_minimal_latent_dim_matches(args, kwargs):
    got, want = ref_and_bridge("minimal_latent_dim", *args, module=ref_optim, **kwargs)
    assert got == want
    for dim, heads in [(7, 4), (8, 4), (9, 1)]:
        assert optim.align_latent_dim(dim, heads) == ref_align_latent_dim(dim, heads)


def test_fit_decoders_match(tdtype):
    Z, W, _, Y, _ = setup(tdtype, seed=7)
    Zg = leaf_copies(Z)
    got, want = ref_and_bridge("fit_decoders", W, Zg, Y, module=ref_optim)
    assert list(got) == list(want)
    for q in want:
        assert got[q].dtype == tdtype and not got[q].requires_grad
        assert_close(got[q], want[q], VALUE_TOL[tdtype] * 10)


def test_subspace_change_matches(tdtype):
    Z, _, _, Y, _ = setup(tdtype, seed=8)
    W_old = bridge.subspaces(Z, Y, 3)["field"]
    W_new = bridge.subspaces(Z + 0.05 * torch.randn_like(Z), Y, 3)["field"]
    got, want = ref_and_bridge("subspace_change", W_old, W_new, module=ref_optim)
    assert list(got) == list(want)
    for key in want:
        assert_close(got[key], want[key], VALUE_TOL[tdtype] * 10)
    same = optim.subspace_change(W_old, W_old)
    assert float(same["mean_angle_deg"]) == 0.0


def test_gradient_of_one_output_ignores_the_others_infinite_derivatives(tdtype):
    """A direction that did not move has cosine 1, where the angle output's ``arccos`` has an
    infinite derivative. Differentiating only ``mean_cos_sim`` must not meet it (torch sends no
    gradient through an unused output; a zero cotangent would give ``0 * inf = NaN``), so the
    gradient is spacelearn's, finite."""
    g = torch.Generator().manual_seed(3)
    W_old = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))[0].T
    W_new = W_old.clone()
    W_new[1] = W_new[1] + 0.3 * torch.randn(6, generator=g, dtype=torch.float64)
    W_old, W_new = W_old.to(tdtype), W_new.to(tdtype)
    grads = []
    for module in (ref_optim, optim):
        w = W_old.clone().requires_grad_()
        module.subspace_change(w, W_new)["mean_cos_sim"].backward()
        grads.append(w.grad)
    want, got = grads
    assert torch.isfinite(got).all()
    assert_close(got, want, VALUE_TOL[tdtype] * 10)


# --- data --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 2, 9, 7), (5, 13)])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_pool_matches_with_gradients(shape, mode, tdtype):
    x = torch.randn(shape, dtype=tdtype, generator=torch.Generator().manual_seed(1))
    ours, theirs = leaf_copies(x), leaf_copies(x)
    got, want = data.pool(ours, 4, mode), ref_data.pool(theirs, 4, mode)
    assert_close(got, want, VALUE_TOL[tdtype])
    weights = torch.randn(want.shape, dtype=tdtype)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    assert_close(ours.grad, theirs.grad, GRAD_TOL[tdtype])


def test_input_to_quantity_and_compute_q_match(tdtype):
    def energy(u: torch.Tensor):
        return (u**2).sum(dim=(1, 2))

    def field(u: torch.Tensor, scale: float = 1.0):
        return scale * u

    u = torch.randn(6, 1, 8, 8, dtype=tdtype)
    for ours, theirs in [
        (data.input_to_quantity(3, "avg", field, e=energy), ref_data.input_to_quantity(3, "avg", field, e=energy)),  # noqa: E501
        (data.compute_Q(field, e=energy), ref_data._compute_Q.compute_Q(field, e=energy)),
    ]:  # fmt: skip
        got, want = ours(u=u, scale=2.0, unused=1), theirs(u=u, scale=2.0, unused=1)
        assert list(got) == list(want)
        for q in want:
            assert_close(got[q], want[q], VALUE_TOL[tdtype])

    def other(u: np.ndarray):
        return u

    with pytest.raises(TypeError, match="'u'"):
        data.compute_Q(field, other)


def test_ensure_dim_and_to_device_match():
    def shapes(*args, **kwargs):
        return [tuple(a.shape) for a in args] + [(k, tuple(v.shape)) for k, v in kwargs.items()]

    for ours, theirs in [
        (data.ensure_dim(shapes, dims=4), ref_data.ensure_dim(shapes, dims=4)),
        (data.ensure_dim(dims=3, targets=["b"])(shapes), ref_data.ensure_dim(dims=3, targets=["b"])(shapes)),  # noqa: E501
        (data.to_device(shapes), ref_data.to_device(shapes)),
        (data.to_device(device="cpu", targets=["a"])(shapes), ref_data.to_device(device="cpu", targets=["a"])(shapes)),  # noqa: E501
    ]:  # fmt: skip
        args = (torch.zeros(3), torch.zeros(2, 2))
        kwargs = {"a": torch.zeros(5), "b": torch.zeros(1, 2)}
        assert ours(*args, **kwargs) == theirs(*args, **kwargs)
    moved = data.to_device(lambda t: t, device="meta")(torch.zeros(2))
    assert moved.device.type == "meta"


# --- util and settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, shape",
    [(m, s) for m in ("auto", "svd") for s in [(9, 9), (12, 5), (5, 12)]] + [("eigen", (9, 9))],
)
def test_svd_back_ends_match(mode, shape, tdtype, restore_configs):
    A = torch.randn(shape, dtype=tdtype, generator=torch.Generator().manual_seed(2))
    spacelearn.settings.config.solver_mode = settings.config.solver_mode = mode
    tol = VALUE_TOL[tdtype] * (1e4 if mode == "eigen" else 10)  # Gram route squares cond(A)
    got, want = ref_and_bridge("singular_values", A, module=ref_util)
    assert_close(got, want, tol)
    (U, S, Vh), (U_ref, S_ref, Vh_ref) = ref_and_bridge("full", A, module=ref_util)
    assert U.shape == U_ref.shape and Vh.shape == Vh_ref.shape and U.dtype == tdtype
    assert_close((U * S) @ Vh, A, tol)
    (U, S), (U_ref, _) = ref_and_bridge("left", A, module=ref_util)
    assert_close(U[:, :3] @ U[:, :3].T, U_ref[:, :3] @ U_ref[:, :3].T, tol)
    (Vh, S), (Vh_ref, _) = ref_and_bridge("right", A, module=ref_util)
    assert_close(Vh[:3].T @ Vh[:3], Vh_ref[:3].T @ Vh_ref[:3], tol)


def test_eigen_mode_returns_reduced_factors(restore_configs):
    """A listed difference: for non-square matrices spacelearn's Gram route returns all
    eigenvectors of the larger Gram matrix ((H, H) for ``left`` of a tall matrix, (W, W) for
    ``right`` of a wide one, W singular values of a wide one); space_jax returns the reduced
    factorisation like every other mode. The shared leading part agrees."""
    spacelearn.settings.config.solver_mode = settings.config.solver_mode = "eigen"
    tall = torch.randn(12, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    (U, S), (U_ref, S_ref) = ref_and_bridge("left", tall, module=ref_util)
    assert U.shape == (12, 5) and U_ref.shape == (12, 12)
    assert_close(S, S_ref[:5], 1e-9)
    assert_close(U @ U.T, U_ref[:, :5] @ U_ref[:, :5].T, 1e-8)
    (Vh, _), (Vh_ref, _) = ref_and_bridge("right", tall.T, module=ref_util)
    assert Vh.shape == (5, 12) and Vh_ref.shape == (12, 12)
    got, want = ref_and_bridge("singular_values", tall.T, module=ref_util)
    assert got.shape == (5,) and want.shape == (12,)
    assert_close(got, want[:5], 1e-9)


def test_singular_value_gradients_match():
    A = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours, theirs = leaf_copies(A), leaf_copies(A)
    (util.singular_values(ours) ** 3).sum().backward()
    (ref_util.singular_values(theirs) ** 3).sum().backward()
    assert_close(ours.grad, theirs.grad, GRAD_TOL[torch.float64])


def test_use_full_matrix_acts(restore_configs):
    A = torch.randn(8, 3, dtype=torch.float64)
    for c in (spacelearn.settings.config, settings.config):
        c.solver_mode, c.use_full_matrix = "svd", True
    (U, _, Vh), (U_ref, _, Vh_ref) = ref_and_bridge("full", A, module=ref_util)
    assert U.shape == U_ref.shape == (8, 8) and Vh.shape == Vh_ref.shape == (3, 3)


def test_lowrank_mode_acts_and_follows_torch_seed(restore_configs):
    g = torch.Generator().manual_seed(4)
    A = (
        torch.randn(40, 6, dtype=torch.float64, generator=g)
        @ torch.randn(6, 30, generator=g).double()
    )
    exact = torch.linalg.svdvals(A)[:6]
    for c in (spacelearn.settings.config, settings.config):
        c.solver_mode, c.n_lowrank_iters = "lowrank", 3
    got, want = ref_and_bridge("singular_values", A, module=ref_util)
    assert got.shape == want.shape == (6,)
    assert_close(got, exact, 1e-9)  # rank-6 matrix: the sketch is exact
    torch.manual_seed(0)
    first = util.full(A)
    torch.manual_seed(0)
    again = util.full(A)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    settings.config.n_lowrank_iters = 0
    noisy = A + 1e-3 * torch.randn(40, 30, dtype=torch.float64, generator=g)
    err = [float((util.singular_values(noisy) - torch.linalg.svdvals(noisy)[:6]).abs().max())]
    settings.config.n_lowrank_iters = 4
    err.append(float((util.singular_values(noisy) - torch.linalg.svdvals(noisy)[:6]).abs().max()))
    assert err[1] < err[0]  # more power iterations, closer to the exact spectrum


def test_solver_mode_reaches_subspaces(restore_configs):
    Z, _, _, Y, _ = setup(torch.float64, seed=9)
    settings.config.solver_mode = "eigen"
    eigen = bridge.subspaces(Z, Y, 2)
    settings.config.solver_mode = "svd"
    svd = bridge.subspaces(Z, Y, 2)
    for q in svd:
        assert_close(projector(eigen[q]), projector(svd[q]), 1e-6)
    settings.config.solver_mode = "nonsense"
    with pytest.raises(ValueError, match="solver"):
        bridge.subspaces(Z, Y, 2)


def test_settings_have_the_reference_fields_and_defaults():
    ours = {f: getattr(settings.Settings(), f) for f in settings.Settings.__dataclass_fields__}
    ref_settings = spacelearn.settings.Settings()
    theirs = {f: getattr(ref_settings, f) for f in type(ref_settings).__dataclass_fields__}
    assert ours == theirs
    assert isinstance(settings.config, settings.Settings)


# --- the API surface ---------------------------------------------------------------------


API = {
    "": ["principal_directions", "subspaces", "combined_loss", "solve_subspaces", "solve_dims"],
    "loss": ["alignment_loss", "disentanglement_loss", "isotropy_loss", "stability_loss"],
    "data": ["input_to_quantity", "pool", "ensure_dim", "to_device"],
    "optim": ["optimal_bins", "minimal_latent_dim", "fit_decoders", "subspace_change", "k_per_q"],
    "util": ["left", "right", "full", "singular_values"],
}


def _signature(fn):
    sig = inspect.signature(fn)
    var = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [(p.kind, "*" if p.kind in var else p.name, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize("module, name", [(m, n) for m, names in API.items() for n in names])
def test_same_names_and_signatures(module, name):
    ours = getattr(getattr(bridge, module) if module else bridge, name)
    theirs = getattr(getattr(spacelearn, module) if module else spacelearn, name)
    assert _signature(ours) == _signature(theirs)
    assert name in (getattr(bridge, module) if module else bridge).__all__


def test_extra_public_names():
    assert _signature(data.compute_Q) == _signature(ref_data._compute_Q.compute_Q)
    assert _signature(optim.align_latent_dim) == _signature(ref_align_latent_dim)
    assert bridge.Space.__dataclass_fields__.keys() == RefSpace.__dataclass_fields__.keys()
