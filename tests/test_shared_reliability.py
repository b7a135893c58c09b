"""Bad and extreme inputs to the shared space: a clear error or a finite, correct result, and
never a file replaced by one that cannot be loaded (issue 14)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from space_jax.shared import ProjectionConfig, SharedSpace

# One shape and config for every training below: one compiled loop.
CONFIG = ProjectionConfig(n_epochs=5)


def aligned(seed: int = 0, n: int = 64) -> dict:
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, 2))
    a = g @ rng.normal(size=(2, 4)) + 0.1 * rng.normal(size=(n, 4))
    b = g @ rng.normal(size=(2, 3)) + 0.1 * rng.normal(size=(n, 3))
    return {"a": a.astype(np.float32), "b": b.astype(np.float32)}


def empty_space() -> SharedSpace:
    return SharedSpace(2).register("a", 4).register("b", 3)


def finite(space: SharedSpace) -> bool:
    return all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(space.params))


@pytest.fixture(scope="module")
def trained():
    data = aligned()
    return empty_space().train(data, CONFIG), data


# --------------------------------------------------------------------------------------------
# save never replaces a good file by one that load refuses


def with_param(space: SharedSpace, model: str, field: str, value) -> SharedSpace:
    params = {**space.params, model: {**space.params[model], field: value}}
    return dataclasses.replace(space, params=params)


@pytest.mark.parametrize(
    ("field", "make", "message"),
    [
        ("projection", lambda p: p.at[0, 0].set(jnp.nan), "projection contains NaN or infinity"),
        ("reconstruction", lambda p: p.at[0, 0].set(jnp.inf), "contains NaN or infinity"),
        ("projection", lambda p: p.astype(jnp.int32), "dtype float16, float32 or float64"),
        ("mean", lambda p: p.astype(jnp.bfloat16), "dtype float16, float32 or float64"),
        ("scale", lambda p: p.at[1].set(0.0), "scale must be positive"),
        ("mean", lambda p: p[:2], r"expected mean of shape \(4,\)"),
    ],
)
def test_save_refuses_what_load_refuses_and_keeps_the_good_file(
    trained, tmp_path, field, make, message
):
    space, _ = trained
    path = tmp_path / "space.npz"
    space.save(path)
    good = path.read_bytes()
    bad = with_param(space, "a", field, make(space.params["a"][field]))
    with pytest.raises(ValueError, match=message) as info:
        bad.save(path)
    assert "nothing written" in str(info.value)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.npz"]  # no temporary left
    SharedSpace.load(path)


def test_save_of_a_diverged_space_after_constant_data_cannot_happen(tmp_path):
    # The scenario: a constant model used to train to NaN and then replace a checkpoint.
    data = aligned()
    path = tmp_path / "space.npz"
    empty_space().train(data, CONFIG).save(path)
    constant = {"a": np.full_like(data["a"], 0.25), "b": data["b"]}
    space = empty_space().train(constant, CONFIG)
    assert finite(space)
    space.save(path)
    loaded = SharedSpace.load(path)
    np.testing.assert_array_equal(loaded.params["a"]["mean"], space.params["a"]["mean"])


def test_save_to_a_folder_is_refused(trained, tmp_path):
    space, _ = trained
    with pytest.raises(ValueError, match="is a folder"):
        space.save(tmp_path)


# --------------------------------------------------------------------------------------------
# Training stays finite on constant and extreme data


def test_constant_model_trains_finite_and_translates_to_the_mean():
    data = aligned()
    for value in (0.0, 0.1, -3e5):
        constant = {"a": np.full_like(data["a"], value), "b": data["b"]}
        space, history = empty_space().train(constant, CONFIG, return_history=True)
        assert finite(space)
        assert bool(jnp.all(jnp.isfinite(history)))
        # A constant model carries no information: its latents are 0, and translating into
        # it gives its (exact) value.
        np.testing.assert_array_equal(space.params["a"]["mean"], np.full(4, value, np.float32))
        np.testing.assert_allclose(space.project("a", constant["a"][:3]), 0.0, atol=1e-6)
        np.testing.assert_allclose(
            space.translate("b", "a", data["b"][:3]), constant["a"][:3], rtol=1e-5, atol=1e-5
        )


def test_a_constant_feature_among_others_stays_finite():
    data = aligned()
    data["a"][:, 1] = 7.0
    space = empty_space().train(data, CONFIG)
    assert finite(space)
    assert float(space.params["a"]["mean"][1]) == 7.0


@pytest.mark.parametrize("scale", [2.0**66, 2.0**-66, 2.0**100, 2.0**-100, 1e20, 1e-20])
def test_training_is_scale_equivariant_in_float32(trained, scale):
    # Powers of two (7e19, 1e-20, 1e30, 8e-31) scale exactly: every result must follow to
    # rounding. Other factors round the data, and Adam near the GCCA optimum amplifies rounding
    # (it normalises tiny gradients), so they are held to a looser tolerance.
    space, data = trained
    scaled = {m: (x * np.float32(scale)).astype(np.float32) for m, x in data.items()}
    big = empty_space().train(scaled, CONFIG)
    assert finite(big)
    want = np.asarray(space.translate("a", "b", data["a"][:5]))
    got = np.asarray(big.translate("a", "b", scaled["a"][:5])) / scale
    tol = 1e-5 if np.log2(scale).is_integer() else 5e-2
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_diverging_training_raises_instead_of_returning_nan():
    data = aligned()
    config = ProjectionConfig(n_epochs=5, objective="go", learning_rate=1e6)
    with pytest.raises(ValueError, match="training diverged.*learning_rate"):
        empty_space().train({m: 1e3 * x for m, x in data.items()}, config)


# --------------------------------------------------------------------------------------------
# project / retrieve / translate refuse NaN and infinity, and report overflow


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_project_retrieve_translate_refuse_non_finite_inputs(trained, bad):
    space, data = trained
    x = data["a"][:3].copy()
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"project\('a'\): x \(features\) contains NaN"):
        space.project("a", x)
    with pytest.raises(ValueError, match=r"translate\('a', 'b'\): x \(features\) contains NaN"):
        space.translate("a", "b", x)
    with pytest.raises(ValueError, match=r"retrieve\('b'\): z \(latent\) contains NaN"):
        space.retrieve("b", np.array([0.0, bad]))


def test_overflowing_results_are_reported(trained):
    space, data = trained
    with pytest.raises(ValueError, match=r"retrieve\('b'\): the result overflows float32"):
        space.retrieve(
            "b", np.full(2, 3e38, np.float32) * np.sign(space.params["b"]["reconstruction"][:, 0])
        )


def test_project_keeps_working_under_jit(trained):
    space, data = trained
    z = jax.jit(lambda x: space.project("a", x))(data["a"][:3])
    np.testing.assert_allclose(z, space.project("a", data["a"][:3]), rtol=1e-6)


def test_the_torch_latent_space_inherits_the_checks(trained):
    torch = pytest.importorskip("torch")  # the bridge's dependency, part of the dev extra
    from space_torch_bridge.shared import LatentSpace

    space, data = trained
    latent = LatentSpace.from_space(space)
    x = torch.tensor(data["a"][:3])
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="contains NaN or infinity"):
        latent.project("a", x)
    with pytest.raises(ValueError, match="contains NaN or infinity"):
        latent.translate("a", "b", x)
    with pytest.raises(ValueError, match="contains NaN or infinity"):
        latent.retrieve("b", torch.tensor([float("inf"), 0.0]))


# --------------------------------------------------------------------------------------------
# load: a ValueError naming the file, never a hint to unpickle


def test_load_of_a_plain_npy_names_the_file(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.ones(3))
    with pytest.raises(ValueError, match=r"weights\.npy: not a readable SharedSpace file") as e:
        SharedSpace.load(path)
    assert "pickle" not in str(e.value)


@pytest.mark.parametrize("seed", range(4))
def test_load_of_random_bytes_names_the_file_and_never_suggests_pickle(tmp_path, seed):
    rng = np.random.default_rng(seed)
    path = tmp_path / "noise.bin"
    head = [b"", b"PK\x03\x04", b"\x93NUMPY", b"\x93NUMPY\x01\x00"][seed]
    path.write_bytes(head + rng.bytes(int(rng.integers(0, 300))))
    with pytest.raises(ValueError, match=r"noise\.bin: not a") as e:
        SharedSpace.load(path)
    assert "pickle" not in str(e.value)


def test_load_of_an_archive_holding_objects_never_suggests_pickle(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, header=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"objects\.npz: .*Python objects") as e:
        SharedSpace.load(path)
    assert "pickle" not in str(e.value)


# --------------------------------------------------------------------------------------------
# ProjectionConfig refuses wrong types when it is built


@pytest.mark.parametrize(
    "changes",
    [
        {"learning_rate": "0.01"},
        {"learning_rate": True},
        {"ridge": b"1"},
        {"self_weight": 1j},
        {"alignment_weight": {"a": 1.0}},
        {"whitening_weight": np.array(["x"])},
        {"lr_decay": jnp.array(True)},
    ],
)
def test_projection_config_refuses_non_numbers_at_construction(changes):
    (field,) = changes
    with pytest.raises(TypeError, match=f"ProjectionConfig.{field}: expected a real number"):
        ProjectionConfig(**changes)


def test_projection_config_refuses_wrong_static_types():
    with pytest.raises(ValueError, match="ProjectionConfig.shuffle"):
        ProjectionConfig(shuffle=1)
    with pytest.raises(TypeError, match="ProjectionConfig.n_epochs"):
        ProjectionConfig(n_epochs="10")
    with pytest.raises(TypeError, match="ProjectionConfig.batch_size"):
        ProjectionConfig(batch_size=2.0)


def test_projection_config_still_rebuilds_with_any_leaves():
    # Pytree operations rebuild configs with tracers, sentinels and cotangents as leaves.
    lrs = jnp.array([1e-3, 1e-2])
    doubled = jax.vmap(lambda lr: CONFIG.replace(learning_rate=lr).learning_rate * 2)(lrs)
    np.testing.assert_allclose(doubled, 2 * lrs)
    placeholders = jax.tree.map(lambda _: object(), CONFIG)
    assert isinstance(placeholders.learning_rate, object)
    zeros = jax.tree.map(lambda _: 0.0, CONFIG)  # refused only when training
    assert zeros.learning_rate == 0.0
