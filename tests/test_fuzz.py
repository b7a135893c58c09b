"""Fuzzing the public API of space_jax and space_torch_bridge with bad and extreme inputs.

Random shapes (empty axes included), dtypes (half precision, float64, ints, bools, complex),
scales from 1e-30 to 1e30, NaN and infinity, constant arrays. Every call must either raise a
``ValueError``/``TypeError`` (``KeyError`` for an unknown model) whose message names one of the
call's arguments, or return a finite result. Two kinds of functions:

* host-level entry points (sizing, moments, the shared space, every bridge function) check
  values: non-finite inputs must raise;
* jittable array functions (pooling, solvers, losses) check shapes and dtypes only (values are
  traced under ``jit``; NaN propagates, as documented): for finite inputs the result must be
  finite, for non-finite ones only the kind of error is checked.

A saved shared space is never replaced by a file that fails to load. Bounded: a few dozen
examples per function, shapes from a small set (so compilations are shared), no deadline.
"""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import space_jax as sj

torch = pytest.importorskip("torch")  # the bridge's dependency, part of the dev extra
import space_torch_bridge as stb  # noqa: E402
from space_torch_bridge.shared import LatentSpace  # noqa: E402

SCALES = [1e-30, 1e-20, 1e-8, 1.0, 1.0, 1e8, 1e20, 1e30]
SPECIALS = [None, None, None, np.nan, np.inf, -np.inf]
DTYPES = ["float32", "float32", "float32", "float16", "bfloat16", "float64", "int32", "bool"]
FUZZ = settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Case:
    """One drawn array: its values, dtype and whether it holds NaN or infinity."""

    def __init__(self, shape, dtype, kind, scale, special, seed):
        rng = np.random.default_rng(seed)
        if kind == "constant":
            x = np.full(shape, scale * 0.7)
        elif kind == "zeros":
            x = np.zeros(shape)
        else:
            x = rng.normal(size=shape) * scale
        if special is not None and x.size:
            x.flat[rng.integers(x.size)] = special
        if dtype in ("int32", "bool"):
            x = np.nan_to_num(np.clip(x, -100, 100))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # float16 overflow: that is inf
            if dtype == "float64":  # a NumPy array: JAX (without x64) reads it as float32
                self.jax = x
            else:
                self.jax = jnp.asarray(x.astype(np.float32) if dtype == "bfloat16" else x, dtype)
        self.numpy = np.array(self.jax if dtype != "bfloat16" else np.asarray(x, np.float32))
        self.dtype = dtype
        self.finite = bool(np.all(np.isfinite(np.asarray(self.jax, np.float64))))

    def __repr__(self) -> str:
        return f"Case({self.jax.shape}, {self.dtype}, values={self.numpy.ravel()[:6]})"

    def torch(self):
        if self.dtype == "bfloat16":
            return torch.tensor(self.numpy).to(torch.bfloat16)
        return torch.from_numpy(self.numpy.copy())


@st.composite
def cases(draw, shape):
    return Case(
        shape,
        draw(st.sampled_from(DTYPES)),
        draw(st.sampled_from(["normal", "normal", "constant", "zeros"])),
        draw(st.sampled_from(SCALES)),
        draw(st.sampled_from(SPECIALS)),
        draw(st.integers(0, 1000)),
    )


BATCH = st.sampled_from([0, 1, 2, 8])
TARGET_SHAPES = st.sampled_from([(), (0,), (1,), (3,), (2, 3), (1, 0, 3), (1, 3, 3)])


def finite_leaves(out) -> bool:
    for leaf in jax.tree.leaves(out):
        if isinstance(leaf, torch.Tensor):
            leaf = leaf.detach().float().numpy()
        a = np.asarray(leaf)
        if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
            if not np.all(np.isfinite(a.astype(np.float64))):
                return False
    return True


def check(call, names, *, inputs_finite: bool, host: bool):
    """Runs ``call``: a clear error naming one of ``names``, or a finite result."""
    try:
        out = call()
    except (ValueError, TypeError, KeyError) as exc:
        message = str(exc)
        assert any(
            re.search(rf"(?<![A-Za-z_]){re.escape(n)}(?![A-Za-z_])", message) for n in names
        ), f"error names none of {names}: {type(exc).__name__}: {message}"
        return None
    if inputs_finite or host:
        assert finite_leaves(out), f"non-finite result (finite inputs: {inputs_finite}): {out}"
    return out


# --------------------------------------------------------------------------------------------
# space_jax: host-level sizing


@given(B=BATCH, shape=TARGET_SHAPES, data=st.data(), t=st.sampled_from([0.5, 0.9, 1.0]))
@FUZZ
def test_sizing(B, shape, data, t):
    y = data.draw(cases((B, *shape)))
    Y = {"q": y.jax}
    names = ["Y['q']", "Y", "threshold", "variance_threshold"]
    k = check(lambda: sj.k_per_q(Y, t), names, inputs_finite=y.finite, host=True)
    if k is not None:
        m = int(np.prod(shape)) if shape else 1
        assert 1 <= k["q"] <= m
    check(lambda: sj.optimal_bins(Y, 4, t), names, inputs_finite=y.finite, host=True)
    dims = check(
        lambda: sj.solve_dims(Y, 4, t, t, k_per_quantity=True),
        [*names, "bin_thresholds", "k_thresholds"],
        inputs_finite=y.finite,
        host=True,
    )
    if dims is not None:
        n, k = dims["q"]
        assert 2 <= n <= 4 and k >= 1


# --------------------------------------------------------------------------------------------
# space_jax: jittable array functions


@given(B=BATCH, shape=TARGET_SHAPES, data=st.data(), mode=st.sampled_from(["avg", "max"]))
@FUZZ
def test_pool(B, shape, data, mode):
    x = data.draw(cases((B, *shape)))
    check(lambda: sj.pool(x.jax, 2, mode), ["x"], inputs_finite=x.finite, host=False)


@given(B=BATCH, shape=TARGET_SHAPES, data=st.data())
@settings(FUZZ, max_examples=6)
def test_solvers_and_losses(B, shape, data):
    z, y = data.draw(cases((B, 3))), data.draw(cases((B, *shape)))
    finite = z.finite and y.finite
    Y = {"q": y.jax}
    names = ["Z", "Y['q']", "Y", "k"]
    space = check(
        lambda: sj.solve_subspaces(z.jax, Y, k=2), names, inputs_finite=finite, host=False
    )
    if space is None:
        return
    check(
        lambda: sj.combined_loss(z.jax, space.W, space.A, Y, space.W),
        [*names, "W", "A", "W_prev"],
        inputs_finite=finite and z.numpy.astype(np.float64).std() < 1e15,
        host=False,
    )


# --------------------------------------------------------------------------------------------
# space_jax: moments (host-level when called eagerly)


@given(B=BATCH, shape=TARGET_SHAPES, data=st.data(), count=st.sampled_from([None, -1.0, np.nan]))
@FUZZ
def test_moments(B, shape, data, count):
    z, y = data.draw(cases((B, 3))), data.draw(cases((B, *shape)))
    finite = z.finite and y.finite
    names = ["Z", "Y['q']", "Y", "m", "a", "b", "k"]
    m = check(lambda: sj.moments(z.jax, {"q": y.jax}), names, inputs_finite=finite, host=True)
    if m is None:
        return
    if count is not None:
        m = sj.Moments(
            jnp.asarray(count, m.zz.dtype), m.z_mean, m.zz, m.y_mean, m.zy, m.yy, m.target_shapes
        )
    merged = check(lambda: sj.merge_moments(m, m), names, inputs_finite=True, host=True)
    if merged is None:
        return
    ks = check(lambda: sj.k_per_q_from_moments(merged, 0.9), names, inputs_finite=True, host=True)
    if ks is not None:
        assert ks["q"] >= 1
    check(
        lambda: sj.solve_dims_from_moments(merged, 4, 0.9, 0.9),
        names,
        inputs_finite=True,
        host=True,
    )


# --------------------------------------------------------------------------------------------
# The shared space and its files


MODELS = {"a": 3, "b": 2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    rng = np.random.default_rng(0)
    g = rng.normal(size=(16, 2))
    data = {m: (g @ rng.normal(size=(2, n))).astype(np.float32) for m, n in MODELS.items()}
    space = sj.SharedSpace(2).register("a", 3).register("b", 2)
    space = space.train(data, sj.ProjectionConfig(n_epochs=3))
    path = tmp_path_factory.mktemp("fuzz") / "space.npz"
    space.save(path)
    return space, path


@given(
    B=st.sampled_from([0, 1, 2, 16]),
    data=st.data(),
    corrupt=st.sampled_from([None, "nan", "int", "shape"]),
)
@FUZZ
def test_shared_space_and_its_file(checkpoint, B, data, corrupt):
    good, path = checkpoint
    xa, xb = data.draw(cases((B, 3))), data.draw(cases((B, 2)))
    finite = xa.finite and xb.finite
    names = ["data['a']", "data['b']", "data", "x", "z", "config.learning_rate"]
    config = sj.ProjectionConfig(n_epochs=3)
    trained = check(
        lambda: good.train({"a": xa.jax, "b": xb.jax}, config),
        names,
        inputs_finite=finite,
        host=True,
    )
    for call in (
        lambda: good.project("a", xa.jax),
        lambda: good.translate("a", "b", xa.jax),
        lambda: good.retrieve("b", xb.jax),
    ):
        check(call, names, inputs_finite=xa.finite and xb.finite, host=True)
    space = trained or good
    if corrupt is not None:
        p = space.params["a"]["projection"]
        bad = {"nan": p.at[0, 0].set(jnp.nan), "int": p.astype(jnp.int32), "shape": p[:1]}
        space = sj.SharedSpace(
            space.dim,
            space.seed,
            names=space.names,
            params={**space.params, "a": {**space.params["a"], "projection": bad[corrupt]}},
        )
    before = path.read_bytes()
    check(
        lambda: space.save(path), ["projection", "nothing written"], inputs_finite=True, host=True
    )
    loaded = sj.SharedSpace.load(path)  # whatever happened, the file loads
    if corrupt is not None:
        assert path.read_bytes() == before
    assert loaded.input_dims == MODELS
    # Random bytes next to it never load, and never suggest unpickling.
    junk = path.with_name("junk.npz")
    junk.write_bytes(xa.numpy.tobytes()[:64])
    with pytest.raises(ValueError, match="junk.npz") as e:
        sj.SharedSpace.load(junk)
    assert "pickle" not in str(e.value)


# --------------------------------------------------------------------------------------------
# space_torch_bridge: every function is host-level


@given(B=BATCH, shape=TARGET_SHAPES, data=st.data())
@settings(FUZZ, max_examples=8)
def test_bridge(B, shape, data):
    z, y = data.draw(cases((B, 3))), data.draw(cases((B, *shape)))
    finite = z.finite and y.finite
    Z, Y = z.torch(), {"q": y.torch()}
    names = [
        "Z",
        "Y['q']",
        "Y",
        "pooled_global",
        "pooled_global['q']",
        "chunks",
        "k",
        "pooled_targets_coarse",
        "pooled_targets_coarse['q']",
        "threshold",
        "W",
        "A",
    ]
    check(lambda: stb.optim.k_per_q(Y), names, inputs_finite=y.finite, host=True)
    check(lambda: stb.data.pool(Y["q"], 2), names, inputs_finite=y.finite, host=True)
    space = check(lambda: stb.solve_subspaces(Z, Y, k=2), names, inputs_finite=finite, host=True)
    if space is not None and finite and z.numpy.astype(np.float64).std() < 1e15:
        check(
            lambda: stb.combined_loss(Z, space.W, space.A, Y, space.W),
            names,
            inputs_finite=True,
            host=True,
        )


@given(B=st.sampled_from([0, 1, 16]), data=st.data())
@FUZZ
def test_bridge_latent_space(checkpoint, B, data):
    good, _ = checkpoint
    xa = data.draw(cases((B, 3)))
    latent = LatentSpace.from_space(good)
    names = ["features", "features of 'a'", "x", "data['a']", "data['b']", "data"]
    check(lambda: latent.project("a", xa.torch()), names, inputs_finite=xa.finite, host=True)
    check(lambda: latent.translate("a", "b", xa.torch()), names, inputs_finite=xa.finite, host=True)
