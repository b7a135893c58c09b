"""Bad input through the bridge: one clear error per case, naming the argument and quantity."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import space_torch_bridge as bridge
from space_torch_bridge import _impl, data, loss, optim, util

B, D = 16, 6


def good():
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(B, D, generator=g)
    Y = {"field": torch.randn(B, 1, 3, 3, generator=g), "energy": torch.randn(B, 2, generator=g)}
    W = {"field": torch.linalg.qr(torch.randn(D, 2, generator=g))[0].T.contiguous()}
    W["energy"] = torch.linalg.qr(torch.randn(D, 1, generator=g))[0].T.contiguous()
    A = {"field": torch.randn(2, 9, generator=g), "energy": torch.randn(1, 2, generator=g)}
    W_prev = {q: w + 0.01 for q, w in W.items()}
    return Z, W, A, Y, W_prev


def combined(Z, W, A, Y, W_prev):
    return bridge.combined_loss(Z, W, A, Y, W_prev)


# --- values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, name",
    [(0, "Z"), (1, "W['energy']"), (2, "A['field']"), (3, "Y['field']"), (4, "W_prev['energy']")],
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensor_is_refused_by_name(where, name, bad):
    args = list(good())
    target = args[where] if where == 0 else args[where][name.split("'")[1]]
    target.view(-1)[3] = bad
    with pytest.raises(ValueError, match=re.escape(f"combined_loss: {name} contains NaN")):
        combined(*args)


# Entries mixing ordinary values, float32's largest (whose column sums overflow) and NaN/inf.
_ENTRIES = st.sampled_from([0.0, -1.5, 2.0, 3.0e38, -3.0e38, float("nan"), float("inf"), -np.inf])


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(
        np.float32, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5), elements=_ENTRIES
    )
)
def test_finite_flag_is_exact_where_column_sums_overflow(x):
    flag = jax.jit(_impl._finite)(x)
    assert bool(flag) == bool(np.all(np.isfinite(x)))
    if x.ndim:  # the batched form takes both branches of the cond
        assert bool(jax.jit(jax.vmap(_impl._finite))(x[None])[0]) == bool(flag)


def test_non_finite_targets_are_refused_by_the_sizing_functions():
    _, _, _, Y, _ = good()
    Y["energy"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"Y\['energy'\].*NaN"):
        optim.k_per_q(Y)
    with pytest.raises(ValueError, match=r"Y\['energy'\].*NaN"):
        bridge.solve_dims(Y, 4, 0.9, 0.9)


def test_non_finite_input_to_a_non_loss_function():
    Z, _, _, Y, _ = good()
    Z[2, 2] = float("inf")
    with pytest.raises(ValueError, match="subspaces: Z contains NaN or infinity"):
        bridge.subspaces(Z, Y, 2)


# --- dtypes, devices, types ------------------------------------------------------------------


def test_integer_latents_are_refused():
    Z, W, A, Y, W_prev = good()
    with pytest.raises(TypeError, match="combined_loss: Z must be a floating-point tensor"):
        combined(Z.long(), W, A, Y, W_prev)


def test_integer_target_is_refused_by_name():
    _, _, _, Y, _ = good()
    Y["field"] = Y["field"].int()
    with pytest.raises(TypeError, match=r"optimal_bins: Y\['field'\] must be a floating-point"):
        optim.optimal_bins(Y)


def test_boolean_basis_is_refused_by_name():
    Z, W, _, _, _ = good()
    W["energy"] = W["energy"] > 0
    with pytest.raises(TypeError, match=r"W\['energy'\] must be a floating-point"):
        loss.disentanglement_loss(Z, W)


def test_tensors_on_different_devices_are_refused():
    Z, W, A, Y, W_prev = good()
    A["energy"] = torch.empty(1, 2, device="meta")
    with pytest.raises(ValueError, match=r"A\['energy'\] is on meta but Z is on cpu"):
        combined(Z, W, A, Y, W_prev)


def test_numpy_array_instead_of_a_tensor_is_refused():
    Z, W, A, Y, W_prev = good()
    Y["field"] = Y["field"].numpy()
    with pytest.raises(TypeError, match=r"Y\['field'\] must be a torch.Tensor, got ndarray"):
        loss.alignment_loss(Z, W, A, Y)


def test_complex_tensor_is_refused():
    with pytest.raises(TypeError, match="A must be a floating-point tensor"):
        util.left(torch.randn(3, 3, dtype=torch.complex64))


def test_cuda_without_a_gpu_jax_explains_the_install(monkeypatch):
    from space_torch_bridge import _convert

    class CudaTensorStandIn:  # this torch build cannot allocate on CUDA
        device = torch.device("cuda", 0)

    monkeypatch.setattr(_convert, "_jax_has_gpu", lambda: False)
    with pytest.raises(RuntimeError, match=r"Z is on cuda:0, but this JAX has no GPU backend"):
        _convert._check_device(CudaTensorStandIn(), "Z")


# --- keys ------------------------------------------------------------------------------------


def test_decoder_keys_that_disagree_are_refused():
    Z, W, A, Y, W_prev = good()
    del A["energy"]
    with pytest.raises(ValueError, match=r"A: quantities must match W's.*missing \['energy'\]"):
        combined(Z, W, A, Y, W_prev)


def test_target_keys_that_disagree_are_refused():
    Z, W, A, Y, W_prev = good()
    Y["pressure"] = Y["energy"]
    with pytest.raises(ValueError, match=r"Y: quantities must match.*unexpected \['pressure'\]"):
        loss.alignment_loss(Z, W, A, Y)


def test_previous_basis_keys_that_disagree_are_refused():
    Z, W, A, Y, W_prev = good()
    W_prev = {"field": W_prev["field"], "other": W_prev["energy"]}
    with pytest.raises(ValueError, match=r"W_prev: quantities must match"):
        loss.stability_loss(W, W_prev)


def test_k_keys_that_disagree_are_refused():
    Z, _, _, Y, _ = good()
    with pytest.raises(ValueError, match=r"k: quantities must match"):
        bridge.solve_subspaces(Z, Y, k={"field": 2})


def test_threshold_for_an_unknown_quantity_is_refused():
    _, _, _, Y, _ = good()
    with pytest.raises(ValueError, match=r"thresholds for unknown quantities \['pres'\]"):
        optim.k_per_q(Y, {"pres": 0.9})


def test_decoders_without_targets_are_refused():
    Z, W, _, Y, _ = good()
    del Y["field"]
    with pytest.raises(ValueError, match=r"no targets for the quantities \['field'\]"):
        optim.fit_decoders(W, Z, Y)


# --- what the core refuses -------------------------------------------------------------------


def test_one_sample_batch_is_refused():
    Z, W, A, Y, W_prev = good()
    with pytest.raises(ValueError, match="at least 2 samples"):
        loss.isotropy_loss(Z[:1], W)


def test_latents_of_the_wrong_rank_are_refused():
    Z, _, _, Y, _ = good()
    with pytest.raises(ValueError, match=r"Z: expected latents of shape \(B, D\)"):
        bridge.principal_directions(Z[0], Y)


def test_target_batch_mismatch_is_refused_by_name():
    Z, _, _, Y, _ = good()
    Y["energy"] = Y["energy"][:-1]
    with pytest.raises(ValueError, match=r"Y\['energy'\]: batch size 15"):
        bridge.subspaces(Z, Y, 2)


def test_basis_of_the_wrong_width_is_refused_by_name():
    Z, W, A, Y, W_prev = good()
    W["field"] = torch.randn(2, D + 1)
    with pytest.raises(ValueError, match=r"W\['field'\]: expected a basis of shape"):
        loss.disentanglement_loss(Z, W)


def test_decoder_of_the_wrong_shape_is_refused_by_name():
    Z, W, A, Y, W_prev = good()
    A["field"] = torch.randn(3, 9)
    with pytest.raises(ValueError, match=r"A\['field'\]: expected a decoder of shape \(k=2, m=9\)"):
        loss.alignment_loss(Z, W, A, Y)


def test_non_positive_k_is_refused():
    Z, _, _, Y, _ = good()
    with pytest.raises(ValueError, match=r"k\['energy'\]: expected an int >= 1"):
        bridge.subspaces(Z, Y, {"field": 2, "energy": 0})


def test_non_positive_n_dir_is_refused():
    Z, W, *_ = good()
    with pytest.raises(ValueError, match="n_dir: expected an int >= 1"):
        loss.isotropy_loss(Z, W, n_dir=0)


def test_threshold_outside_the_unit_interval_is_refused():
    _, _, _, Y, _ = good()
    with pytest.raises(ValueError, match=r"threshold: expected a float in \(0, 1\]"):
        optim.k_per_q(Y, 1.5)


def test_unknown_pooling_mode_is_refused_with_spacelearns_phrase():
    with pytest.raises(ValueError, match=r"^Invalid mode: mean\. pool: mode must be 'avg' or"):
        data.pool(torch.randn(4, 8), 2, "mean")


def test_pooling_a_three_dimensional_tensor_is_refused_with_spacelearns_phrase():
    expected = r"^Invalid number of dimensions: 3\. Expected 2 \(B, S\) or 4 .* shape \(4, 3, 8\)"
    with pytest.raises(ValueError, match=expected):
        data.pool(torch.randn(4, 3, 8), 2)


def test_free_fraction_out_of_range_is_refused():
    with pytest.raises(ValueError, match="free_frac"):
        optim.minimal_latent_dim({"a": 3}, free_frac=1.0)


def test_scalar_k_without_q_is_refused():
    with pytest.raises(ValueError, match="Q: required"):
        optim.minimal_latent_dim(3)


def test_unknown_solver_mode_is_refused():
    from space_torch_bridge import settings

    saved = settings.config.solver_mode
    settings.config.solver_mode = "fast"
    try:
        with pytest.raises(ValueError, match="config.solver_mode: expected one of"):
            util.singular_values(torch.randn(3, 3))
    finally:
        settings.config.solver_mode = saved


def test_errors_leave_the_jax_configuration_alone():
    Z, W, A, Y, W_prev = good()
    Z = Z.double()
    Z[0, 0] = float("nan")
    with pytest.raises(ValueError):
        combined(Z, W, A, Y, W_prev)
    assert jax.config.jax_enable_x64 is False
