"""Tests of space_jax.shared: the seed's semantics, the objective, training, files and errors."""

from __future__ import annotations

import itertools
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from space_jax.shared import (
    ProjectionConfig,
    SharedSpace,
    init_projections,
    projection_loss,
    train_projections,
)

# --------------------------------------------------------------------------------------------
# Data and helpers


def synthetic(seed: int = 0, n: int = 600, k: int = 4, sizes=(8, 16, 32)) -> dict:
    """Three models of different sizes seeing one shared factor ``g`` plus private structure."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, k))
    data = {}
    for i, size in enumerate(sizes):
        private = rng.normal(size=(n, 2)) @ rng.normal(size=(2, size))
        x = g @ rng.normal(size=(k, size)) + 0.5 * private + 0.5 * rng.normal(size=(n, size))
        data[f"m{i}"] = ((i + 1) * x + 3 * i).astype(np.float32)  # different scales and offsets
    return data


def split(data: dict, seed: int = 0) -> tuple[dict, dict]:
    n = len(next(iter(data.values())))
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(0.8 * n)
    return {m: x[perm[:cut]] for m, x in data.items()}, {m: x[perm[cut:]] for m, x in data.items()}


def r2(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Pooled coefficient of determination: ``1 - SSE / SST`` over every feature."""
    return 1.0 - float(((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def space_for(data: dict, dim: int, seed: int = 0) -> SharedSpace:
    space = SharedSpace(dim, seed)
    for name, x in data.items():
        space = space.register(name, x.shape[1])
    return space


def check_translation_against_ridge(data: dict, dim: int) -> dict:
    """Trains on 80%, returns ``{(a, b): (ours, oracle)}`` test R² for every ordered pair."""
    from sklearn.linear_model import RidgeCV

    train, test = split(data)
    space = space_for(data, dim).train(train)
    scores = {}
    for a, b in itertools.permutations(data, 2):
        oracle = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(train[a], train[b])
        ours = r2(test[b], np.asarray(space.translate(a, b, test[a])))
        scores[a, b] = (ours, r2(test[b], oracle.predict(test[a])))
    for name in data:
        s = np.linalg.svd(np.asarray(space.project(name, test[name])), compute_uv=False)
        assert s[-1] > 1e-3 * s[0], f"{name}: collapsed latent direction, singular values {s}"
    return scores


def seed_update_numpy(P: dict, R: dict, data: dict, lr: float, n_epochs: int, weight: float):
    """The Go seed's TrainProjections, transcribed loop by loop (float64)."""
    P = {m: np.array(p, dtype=np.float64) for m, p in P.items()}
    R = {m: np.array(r, dtype=np.float64) for m, r in R.items()}
    names = list(data)
    for _ in range(n_epochs):
        for i in range(len(data[names[0]])):
            latents = {m: data[m][i] @ P[m] for m in names}
            mean_latent = sum(latents.values()) / len(names)
            for m in names:
                x, z, proj, rec = data[m][i], latents[m], P[m], R[m]
                d_recon = z @ rec - x
                d_align = z - mean_latent
                for l, d in itertools.product(range(rec.shape[0]), range(rec.shape[1])):
                    rec[l, d] -= lr * d_recon[d] * z[l]
                for r, c in itertools.product(range(proj.shape[0]), range(proj.shape[1])):
                    recon_grad = sum(d_recon[d] * rec[c, d] for d in range(rec.shape[1])) * x[r]
                    proj[r, c] -= lr * (recon_grad + weight * d_align[c] * x[r])
        lr *= 0.999
    return P, R


# Shared by several tests so that they reuse one compiled training loop.
TINY = synthetic(n=60, sizes=(3, 5))
# SGD: Adam would turn the float noise of the gradient at the exact GCCA optimum into full steps,
# which makes batched and unbatched runs drift apart.
TINY_CONFIG = ProjectionConfig(n_epochs=5, optimizer="sgd")
TINY_BATCHES = ProjectionConfig(init="xavier", batch_size=16, n_epochs=3)


@pytest.fixture(scope="module")
def trained() -> tuple[SharedSpace, dict]:
    """A space trained as in the synthetic target test (same shapes: one compiled loop)."""
    data, _ = split(synthetic())
    return space_for(data, 4).train(data), data


# --------------------------------------------------------------------------------------------
# The seed's semantics


def test_init_projections_is_xavier_uniform():
    params = init_projections(jax.random.PRNGKey(0), {"a": 300, "b": 100}, 50)
    for name, n in (("a", 300), ("b", 100)):
        limit = np.sqrt(6.0 / (n + 50))
        for field, shape in (("projection", (n, 50)), ("reconstruction", (50, n))):
            w = np.asarray(params[name][field])
            assert w.shape == shape
            assert np.abs(w).max() <= limit
            assert np.abs(w).max() > 0.98 * limit
            np.testing.assert_allclose(w.var(), limit**2 / 3, rtol=0.1)
        np.testing.assert_array_equal(params[name]["mean"], np.zeros(n))
        np.testing.assert_array_equal(params[name]["scale"], np.ones(n))


def test_go_objective_matches_the_seed_update():
    rng = np.random.default_rng(0)
    data = {
        "a": rng.normal(size=(5, 3)),
        "b": rng.normal(size=(5, 4)),
        "c": rng.normal(size=(5, 2)),
    }
    config = ProjectionConfig(objective="go", n_epochs=3, learning_rate=0.05, alignment_weight=0.7)
    with jax.enable_x64(True):
        params = init_projections(
            jax.random.PRNGKey(0), {m: x.shape[1] for m, x in data.items()}, 2, dtype=jnp.float64
        )
        new, history = train_projections(params, data, config)
        expected_P, expected_R = seed_update_numpy(
            {m: params[m]["projection"] for m in data},
            {m: params[m]["reconstruction"] for m in data},
            data,
            lr=0.05,
            n_epochs=3,
            weight=0.7,
        )
    for m in data:
        np.testing.assert_allclose(new[m]["projection"], expected_P[m], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(new[m]["reconstruction"], expected_R[m], rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(new[m]["mean"], np.zeros(data[m].shape[1]))
        np.testing.assert_array_equal(new[m]["scale"], np.ones(data[m].shape[1]))
    assert history.shape == (3,)


def test_go_config_resolves_to_the_seed_choices():
    go = ProjectionConfig(objective="go").resolved()
    assert (go.optimizer, go.batch_size, go.init, go.shuffle) == ("sgd", 1, "xavier", False)
    assert go.lr_decay == 0.999
    assert (go.learning_rate, go.n_epochs, go.alignment_weight, go.latent_dim) == (0.01, 100, 1, 0)
    default = ProjectionConfig().resolved()
    assert (default.optimizer, default.batch_size, default.init) == ("adam", None, "gcca")
    assert default.lr_decay == 1.0


def test_go_objective_diverges_at_its_defaults_on_unit_variance_data():
    rng = np.random.default_rng(0)
    data = {"a": rng.normal(size=(200, 64)), "b": rng.normal(size=(200, 64))}
    # Under jit (or vmap) the diverged parameters come back; called directly, training says so.
    config = ProjectionConfig(objective="go")
    params = space_for(data, 8).params
    _, history = jax.jit(lambda p: train_projections(p, data, config))(params)
    assert not np.isfinite(np.asarray(history[-1]))
    with pytest.raises(ValueError, match="training diverged"):
        space_for(data, 8).train(data, ProjectionConfig(objective="go"))


# --------------------------------------------------------------------------------------------
# The objective


def test_go_alignment_can_be_scaled_away_invariant_alignment_cannot(trained):
    space, data = trained
    c = 0.01
    shrunk = {
        m: {**e, "projection": c * e["projection"], "reconstruction": e["reconstruction"] / c}
        for m, e in space.params.items()
    }
    go = ProjectionConfig(objective="go")
    _, go_terms = projection_loss(space.params, data, go)
    _, go_shrunk = projection_loss(shrunk, data, go)
    np.testing.assert_allclose(go_shrunk["reconstruction"], go_terms["reconstruction"], rtol=1e-4)
    np.testing.assert_allclose(go_shrunk["alignment"], c**2 * go_terms["alignment"], rtol=1e-4)

    loss, terms = projection_loss(space.params, data)
    loss_shrunk, terms_shrunk = projection_loss(shrunk, data)
    for name in ("reconstruction", "alignment"):
        np.testing.assert_allclose(terms_shrunk[name], terms[name], rtol=1e-4)
    assert terms["whitening"] < 0.05
    assert terms_shrunk["whitening"] > 0.9  # cov(z̄) ~ c² I: shrinking costs
    assert loss_shrunk > loss + 0.5


def test_gcca_start_whitens_the_consensus_and_solves_for_the_reconstruction(trained):
    _, data = trained
    space = space_for(data, 4).train(data, ProjectionConfig(learning_rate=1e-12))
    xs = {m: (x - space.params[m]["mean"]) / space.params[m]["scale"] for m, x in data.items()}
    zbar = sum(xs[m] @ space.params[m]["projection"] for m in data) / len(data)
    zc = zbar - zbar.mean(0)
    np.testing.assert_allclose(zc.T @ zc / len(zc), np.eye(4), atol=1e-3)
    # Each R_b minimises the reconstruction and ridge terms given the P: zero gradient.
    grads = jax.jit(jax.grad(lambda p: projection_loss(p, data)[0]))(space.params)
    for m in data:
        g, r = grads[m]["reconstruction"], space.params[m]["reconstruction"]
        assert float(jnp.abs(g).max()) < 1e-4 * float(jnp.abs(r).max())


def test_full_batch_moments_give_the_same_loss_and_gradients(trained):
    from space_jax.shared import objectives as shared

    space, data = trained
    names = tuple(data)
    sizes = tuple(data[m].shape[1] for m in names)
    p = space.params
    X = jnp.concatenate([(data[m] - p[m]["mean"]) / p[m]["scale"] for m in names], axis=1)
    P = jnp.concatenate([p[m]["projection"] for m in names], axis=0)
    R = jnp.concatenate([p[m]["reconstruction"] for m in names], axis=1)
    config = ProjectionConfig(self_weight=0.3, ridge=0.05).resolved()
    moments = (X.mean(axis=0), X.T @ X / X.shape[0])

    @jax.jit
    def both(P, R):
        def direct(P, R):
            return shared._invariant_terms(P, R, X, sizes, config)[0]

        def from_moments(P, R):
            return shared._invariant_terms_from_moments(P, R, moments, sizes, config)[0]

        return [jax.value_and_grad(f, argnums=(0, 1))(P, R) for f in (direct, from_moments)]

    (loss, grads), (loss_m, grads_m) = both(P, R)
    np.testing.assert_allclose(loss, projection_loss(p, data, config)[0], rtol=1e-6)
    np.testing.assert_allclose(loss_m, loss, rtol=1e-4)
    for g, g_m in zip(grads, grads_m, strict=True):
        np.testing.assert_allclose(g_m, g, rtol=1e-3, atol=1e-5)


def test_default_training_reaches_the_ridge_oracle_on_synthetic_data():
    scores = check_translation_against_ridge(synthetic(), 4)
    assert len(scores) == 6
    for pair, (ours, oracle) in scores.items():
        assert oracle > 0.5
        assert ours >= 0.90 * oracle, f"{pair}: R² {ours:.3f} vs ridge {oracle:.3f}"


def test_default_training_reaches_the_ridge_oracle_on_digit_halves():
    from sklearn.datasets import load_digits

    images = load_digits().data.reshape(-1, 8, 8)
    data = {
        "left": images[:, :, :4].reshape(-1, 32).astype(np.float32),
        "right": images[:, :, 4:].reshape(-1, 32).astype(np.float32),
    }
    scores = check_translation_against_ridge(data, 12)
    for pair, (ours, oracle) in scores.items():
        assert ours >= 0.90 * oracle, f"{pair}: R² {ours:.3f} vs ridge {oracle:.3f}"


def test_training_from_xavier_lowers_the_loss():
    data, _ = split(synthetic())
    space = space_for(data, 4)
    _, history = space.train(
        data, ProjectionConfig(init="xavier", n_epochs=300), return_history=True
    )
    assert history.shape == (300,)
    assert float(history[-1]) < 0.5 * float(history[0])


# --------------------------------------------------------------------------------------------
# Training mechanics


def test_vmap_over_config_fields_equals_the_loop():
    data = TINY
    params = init_projections(jax.random.PRNGKey(0), {"m0": 3, "m1": 5}, 2)
    base = TINY_CONFIG
    lrs, weights, ridges = jnp.array([0.01, 0.1]), jnp.array([0.5, 2.0]), jnp.array([0.1, 0.01])

    sweep = base.replace(learning_rate=lrs, alignment_weight=weights, ridge=ridges)
    axes = base.replace(
        learning_rate=0, alignment_weight=0, ridge=0, whitening_weight=None, self_weight=None
    )
    swept, histories = jax.vmap(train_projections, in_axes=(None, None, axes))(params, data, sweep)
    for i in range(2):
        config = base.replace(
            learning_rate=float(lrs[i]), alignment_weight=float(weights[i]), ridge=float(ridges[i])
        )
        one, history = train_projections(params, data, config)
        np.testing.assert_allclose(histories[i], history, rtol=1e-4, atol=1e-6)
        for a, b in zip(jax.tree.leaves(swept), jax.tree.leaves(one), strict=True):
            np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-5)


def test_vmap_over_keys_equals_the_loop():
    data, config = TINY, TINY_BATCHES

    def run(key):
        params = init_projections(key, {"m0": 3, "m1": 5}, 2)
        return train_projections(params, data, config, key=key)

    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    ensemble, histories = jax.vmap(run)(keys)
    assert histories.shape == (3, 3)
    for i in range(3):
        one, history = run(keys[i])
        np.testing.assert_allclose(histories[i], history, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            ensemble["m1"]["projection"][i], one["m1"]["projection"], rtol=1e-4, atol=1e-5
        )


def test_mini_batches_cover_a_partial_last_batch():
    space = space_for(TINY, 2)
    new, history = space.train(TINY, TINY_BATCHES, return_history=True)  # 60 = 3 x 16 + 12
    assert history.shape == (3,)
    assert np.all(np.isfinite(np.asarray(history)))
    assert new.names == space.names


def test_models_missing_from_data_keep_their_matrices():
    data = TINY
    space = space_for(data, 2).register("idle", 7)
    new = space.train(data, TINY_CONFIG)
    for field in ("projection", "reconstruction", "mean", "scale"):
        np.testing.assert_array_equal(new.params["idle"][field], space.params["idle"][field])
    assert not np.array_equal(new.params["m0"]["projection"], space.params["m0"]["projection"])


def test_latent_dim_override_gives_a_space_of_that_size():
    data = TINY
    space = space_for(data, 3)
    new = space.train(data, TINY_CONFIG.replace(latent_dim=2))
    assert new.dim == 2 and space.dim == 3
    assert new.project("m0", data["m0"]).shape == (60, 2)
    with pytest.raises(ValueError, match="latent_dim=2 differs"):
        train_projections(space.params, data, ProjectionConfig(latent_dim=2))


# --------------------------------------------------------------------------------------------
# The space


def test_register_is_functional_deterministic_and_ordered():
    empty = SharedSpace(3, seed=7)
    one = empty.register("b", 4)
    two = one.register("a", 2)
    assert empty.names == () and one.names == ("b",) and two.names == ("b", "a")
    assert two.input_dims == {"b": 4, "a": 2}
    again = SharedSpace(3, seed=7).register("a", 2)
    np.testing.assert_array_equal(two.params["a"]["projection"], again.params["a"]["projection"])
    other_seed = SharedSpace(3, seed=8).register("a", 2)
    assert not np.array_equal(other_seed.params["a"]["projection"], again.params["a"]["projection"])
    replaced = two.register("b", 6, replace=True)
    assert replaced.names == ("b", "a") and replaced.input_dims["b"] == 6
    assert "dim=3" in repr(two)


def test_project_retrieve_translate_on_vectors_and_batches(trained):
    space, data = trained
    x = data["m0"][:5]
    z = space.project("m0", x)
    assert z.shape == (5, 4)
    np.testing.assert_allclose(space.project("m0", x[0]), z[0], rtol=1e-5, atol=1e-6)
    back = space.retrieve("m2", z)
    assert back.shape == (5, 32)
    np.testing.assert_allclose(space.retrieve("m2", z[1]), back[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(space.translate("m0", "m2", x), back, rtol=1e-6)
    p = space.params["m0"]
    expected = ((x - p["mean"]) / p["scale"]) @ p["projection"]
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)


def test_space_is_a_pytree_usable_under_jit(trained):
    space, data = trained
    translate = jax.jit(lambda s, x: s.translate("m1", "m0", x))
    np.testing.assert_allclose(
        translate(space, data["m1"][:3]), space.translate("m1", "m0", data["m1"][:3]), rtol=1e-5
    )
    leaves, treedef = jax.tree.flatten(space)
    assert len(leaves) == 4 * len(space.names)
    assert jax.tree.unflatten(treedef, leaves).names == space.names


# --------------------------------------------------------------------------------------------
# Files


def test_save_load_round_trips_exactly(trained, tmp_path):
    space, data = trained
    path = tmp_path / "space.npz"
    space.save(path)
    loaded = SharedSpace.load(path)
    assert (loaded.dim, loaded.seed, loaded.names) == (space.dim, space.seed, space.names)
    for m in space.names:
        for field, value in space.params[m].items():
            assert loaded.params[m][field].dtype == value.dtype
            np.testing.assert_array_equal(loaded.params[m][field], value)
    np.testing.assert_array_equal(
        loaded.translate("m0", "m1", data["m0"]), space.translate("m0", "m1", data["m0"])
    )
    assert os.listdir(tmp_path) == ["space.npz"]  # no temporary file left


def test_save_replaces_atomically_and_cleans_up_on_failure(trained, tmp_path, monkeypatch):
    space, _ = trained
    path = tmp_path / "space.npz"
    SharedSpace(2).register("x", 3).save(path)
    before = path.read_bytes()

    def failing_savez(file, **arrays):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        space.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["space.npz"]


def test_load_refuses_a_truncated_file(trained, tmp_path):
    space, _ = trained
    path = tmp_path / "space.npz"
    space.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable SharedSpace file"):
        SharedSpace.load(path)


def test_load_refuses_foreign_files(tmp_path):
    foreign = tmp_path / "other.npz"
    np.savez(foreign, weights=np.ones(3))
    with pytest.raises(ValueError, match="not a SharedSpace file"):
        SharedSpace.load(foreign)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a readable SharedSpace file"):
        SharedSpace.load(text)
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable SharedSpace file"):
        SharedSpace.load(pickled)
    with pytest.raises(FileNotFoundError):
        SharedSpace.load(tmp_path / "missing.npz")


def test_load_refuses_other_versions_and_inconsistent_arrays(tmp_path):
    path = tmp_path / "space.npz"
    SharedSpace(2).register("x", 3).save(path)
    with zipfile.ZipFile(path) as z:
        arrays = {name.removesuffix(".npy"): np.load(z.open(name)) for name in z.namelist()}
    header = bytes(arrays["header"]).decode()

    def write(**changes):
        np.savez(path, **{**arrays, **changes})

    write(header=np.frombuffer(header.replace('"version": 1', '"version": 2').encode(), np.uint8))
    with pytest.raises(ValueError, match="format version 2"):
        SharedSpace.load(path)
    write(**{"model0.projection": np.ones((3, 5), np.float32)})
    with pytest.raises(ValueError, match=r"model 'x': expected projection of shape \(3, 2\)"):
        SharedSpace.load(path)
    write(**{"model0.scale": np.array([1.0, np.nan, 1.0], np.float32)})
    with pytest.raises(ValueError, match="NaN or infinity"):
        SharedSpace.load(path)


# --------------------------------------------------------------------------------------------
# Bad input: one test each


@pytest.fixture()
def pair() -> tuple[SharedSpace, dict]:
    rng = np.random.default_rng(0)
    data = {"a": rng.normal(size=(10, 3)), "b": rng.normal(size=(10, 2))}
    return space_for(data, 2), data


def test_training_needs_two_models(pair):
    space, data = pair
    with pytest.raises(ValueError, match=r"at least two models, got \['a'\]"):
        space.train({"a": data["a"]})


def test_training_refuses_an_unregistered_model(pair):
    space, data = pair
    with pytest.raises(KeyError, match="model 'c' is not registered"):
        space.train({**data, "c": data["a"]})


def test_training_refuses_mismatched_sample_counts(pair):
    space, data = pair
    with pytest.raises(ValueError, match=r"data\['b'\]: mismatched sample counts: expected 10"):
        space.train({"a": data["a"], "b": data["b"][:7]})


def test_training_refuses_no_samples(pair):
    space, _ = pair
    with pytest.raises(ValueError, match="no training samples"):
        space.train({"a": np.zeros((0, 3)), "b": np.zeros((0, 2))})


def test_training_refuses_a_wrong_feature_length(pair):
    space, data = pair
    with pytest.raises(ValueError, match=r"data\['b'\]: expected feature length 2 .* got 4"):
        space.train({"a": data["a"], "b": np.ones((10, 4))})


def test_project_refuses_a_wrong_feature_length(pair):
    space, _ = pair
    with pytest.raises(ValueError, match=r"project\('a'\): expected features of shape \(3,\)"):
        space.project("a", np.ones((4, 5)))


def test_retrieve_refuses_a_wrong_latent_length(pair):
    space, _ = pair
    with pytest.raises(ValueError, match=r"retrieve\('b'\): expected latent of shape \(2,\)"):
        space.retrieve("b", np.ones(3))


def test_project_refuses_an_unknown_model(pair):
    space, _ = pair
    with pytest.raises(KeyError, match=r"model 'zz' is not registered; registered models: \['a'"):
        space.project("zz", np.ones(3))


def test_retrieve_refuses_an_unknown_model(pair):
    space, _ = pair
    with pytest.raises(KeyError, match="model 'zz' is not registered"):
        space.retrieve("zz", np.ones(2))


def test_translate_refuses_an_unknown_target(pair):
    space, _ = pair
    with pytest.raises(KeyError, match="model 'zz' is not registered"):
        space.translate("a", "zz", np.ones(3))


def test_training_refuses_nan(pair):
    space, data = pair
    bad = data["b"].copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"data\['b'\]: contains NaN or infinity"):
        space.train({"a": data["a"], "b": bad})


def test_training_refuses_infinity(pair):
    space, data = pair
    bad = data["a"].copy()
    bad[0, 0] = -np.inf
    with pytest.raises(ValueError, match=r"data\['a'\]: contains NaN or infinity"):
        space.train({"a": bad, "b": data["b"]})


@pytest.mark.parametrize("dim", [0, -3])
def test_space_refuses_dim_below_one(dim):
    with pytest.raises(ValueError, match="dim must be an int >= 1"):
        SharedSpace(dim)


@pytest.mark.parametrize("input_dim", [0, -1])
def test_register_refuses_input_dim_below_one(input_dim):
    with pytest.raises(ValueError, match=r"model 'a': input_dim must be an int >= 1"):
        SharedSpace(2).register("a", input_dim)


def test_register_refuses_a_name_twice(pair):
    space, _ = pair
    with pytest.raises(ValueError, match="model 'a' is already registered .* replace=True"):
        space.register("a", 3)


def test_training_refuses_non_2d_data(pair):
    space, data = pair
    with pytest.raises(ValueError, match=r"data\['a'\]: expected a 2-D array \(n_samples, 3\)"):
        space.train({"a": data["a"][None], "b": data["b"]})


def test_config_refuses_unknown_choices_and_bad_values(pair):
    space, data = pair
    with pytest.raises(ValueError, match="ProjectionConfig.objective"):
        ProjectionConfig(objective="magic")
    with pytest.raises(ValueError, match="ProjectionConfig.n_epochs"):
        ProjectionConfig(n_epochs=0)
    with pytest.raises(ValueError, match=r"config.learning_rate: expected a value in \(0.0"):
        space.train(data, ProjectionConfig(learning_rate=-1.0))
    with pytest.raises(ValueError, match="batch_size=11 exceeds the 10 training samples"):
        space.train(data, ProjectionConfig(batch_size=11))


# --------------------------------------------------------------------------------------------
# Any shapes


@settings(max_examples=10, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=2, max_size=3),
    dim=st.integers(1, 4),
    n=st.integers(2, 8),
    seed=st.integers(0, 2**16),
)
def test_any_registered_shapes_train_to_finite_values(sizes, dim, n, seed):
    rng = np.random.default_rng(seed)
    data = {f"m{i}": rng.normal(size=(n, size)) for i, size in enumerate(sizes)}
    space, history = space_for(data, dim).train(
        data, ProjectionConfig(n_epochs=2), return_history=True
    )
    assert np.all(np.isfinite(np.asarray(history)))
    for leaf in jax.tree.leaves(space.params):
        assert np.all(np.isfinite(np.asarray(leaf)))
