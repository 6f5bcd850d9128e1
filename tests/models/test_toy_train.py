"""Training toy models as one program: the papers' effects on reduced sizes, and the
trainer against a plain loop over instances, across devices and across groupings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.errors import NonFiniteLossError
from jaxinterp.models import toy

REPO = Path(__file__).resolve().parents[2]
IMP20 = toy.geometric_importance(20, 0.7)


@pytest.fixture(scope="module")
def basic():
    """n=20, m=5, importance 0.7^i at S=0 and S=0.99 (ReLU), and the linear model at S=0.99."""
    # Batch 128 for twice the steps: a fifth of the CPU time of 5000 steps of 1024 under the
    # tests' LLVM -O0, and every seed 0-4 ends with its tail norms <= 0.011 (5000x1024: up to
    # 0.083 on seed 1).
    train = toy.ToyTrainConfig(steps=10_000, batch_size=128, progress=False)
    relu = toy.train_toys(toy.ToyConfig(20, 5), [1.0, 0.01], IMP20, train)
    linear = toy.train_toys(toy.ToyConfig(20, 5, "linear"), [0.01], IMP20, train)
    return relu, linear


def test_dense_relu_model_keeps_exactly_the_top_m_features(basic):
    norms = np.asarray(toy.feature_norms(basic[0].model))[0]
    assert np.all(np.abs(norms[:5] - 1) < 0.1), norms
    assert np.all(norms[5:] < 0.1), norms
    W = np.asarray(basic[0].model.W)[0, :5]
    np.testing.assert_allclose(W @ W.T, np.eye(5), atol=0.15)  # orthogonal, not superposed


def test_sparse_relu_model_superposes_more_than_m_features(basic):
    assert int(toy.n_represented(basic[0].model)[1]) >= 8
    assert np.asarray(toy.superposition(basic[0].model))[1, :5].max() > 0.5


def test_linear_model_keeps_the_top_m_even_when_sparse(basic):
    norms = np.asarray(toy.feature_norms(basic[1].model))[0]
    assert int((norms > 0.5).sum()) == 5 and np.all(norms[:5] > 0.9)


def test_five_sparse_features_in_two_dimensions_form_a_pentagon():
    run = toy.train_toys(toy.ToyConfig(5, 2), np.full(4, 0.03), np.ones(5),
                         toy.ToyTrainConfig(steps=5000, progress=False, seed=1))
    best = int(np.argmin(run.final_loss))  # the lowest-loss seed (local minima exist)
    W = np.asarray(run.model.W)[best]
    _, gaps = toy.neighbour_angles(W)
    norms = np.asarray(toy.feature_norms(W))
    assert np.all((norms > 0.9) & (norms < 1.3)), norms
    np.testing.assert_allclose(gaps, 72.0, atol=3.0)
    assert [g.name for g in toy.feature_geometry(W)] == ["pentagon"]


def test_double_descent_curve_has_an_interior_maximum():
    T = np.array([3, 8, 24, 96, 384])
    reps, n, p = 3, 40, 0.075
    probs, sizes = np.full(T.size * reps, p), np.repeat(T, reps)
    data = toy.fixed_datasets(jax.random.key(1000), probs, sizes, n)
    train = toy.ToyTrainConfig(steps=3000, lr=1e-2, weight_decay=1e-2, warmup_steps=150,
                               schedule="cosine", progress=False)
    cfg = toy.ToyConfig(n, 2)
    run = toy.train_toys(cfg, probs, np.ones(n), train, data=data)
    test = toy.evaluate_toys(cfg, run.model, probs, np.ones(n), jax.random.key(2000), 20_000)
    curve = test.reshape(T.size, reps).mean(1)
    peak = int(np.argmax(curve))
    assert 0 < peak < T.size - 1, curve
    assert curve[peak] > 1.5 * max(curve[0], curve[-1]), curve
    assert curve[-1] < p / 3  # generalising: better than outputting zero
    train_loss = run.final_loss.reshape(T.size, reps).mean(1)
    assert train_loss[0] < 1e-4 < train_loss[-1]  # memorising: the small set is fit exactly


def test_one_program_equals_a_loop_over_instances():
    """The vmapped, scanned, blocked trainer against jitted single-instance steps."""
    cfg = toy.ToyConfig(6, 2)
    p, imp = np.array([1.0, 0.05]), toy.geometric_importance(6, 0.8)
    train = toy.ToyTrainConfig(steps=10, batch_size=64, log_every=6, progress=False,
                               instances_per_block=1)
    run = toy.train_toys(cfg, p, imp, train)

    opt = train.optimizer()
    step = jax.jit(toy.make_instance_step(cfg, opt))
    key = jax.random.key(train.seed, impl=train.prng_impl)

    @jax.jit
    def start(key):
        models = toy.init_toys(cfg, toy.instance_keys(jax.random.fold_in(key, 0), 2))
        words = toy.data_key_words(toy.instance_keys(jax.random.fold_in(key, 1), 2))
        return models, jax.vmap(opt.init)(models), words

    models, states, words = start(key)
    for i in range(2):
        model, state = jax.tree.map(lambda a, i=i: a[i], (models, states))
        source = toy.OnlineFeatures(jnp.float32(p[i]), 64, 6)
        for t in range(10):
            model, state, _ = step(model, state, source, jnp.asarray(imp), words[i], jnp.int32(t))
        np.testing.assert_allclose(run.model.W[i], model.W, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(run.model.b_final[i], model.b_final, rtol=2e-5, atol=2e-6)
    assert run.loss_history.shape == (2, 2) and list(run.log_steps) == [6, 10]


def test_instances_do_not_depend_on_the_others():
    """Fixed training sets of different sizes train as separate groups of one program; an
    instance's result does not change when others (of any size) are added."""
    cfg, train = toy.ToyConfig(5, 2), toy.ToyTrainConfig(steps=30, progress=False)
    data = toy.fixed_datasets(jax.random.key(0), np.full(3, 0.2), np.array([4, 16, 4]), 5)
    mixed = toy.train_toys(cfg, np.full(3, 0.2), np.ones(5), train, data=data)
    alone = toy.train_toys(cfg, np.full(2, 0.2), np.ones(5), train,
                           data=toy.FixedDataset(data.x[:2, :16], data.weights[:2, :16]))
    np.testing.assert_allclose(mixed.model.W[:2], alone.model.W, rtol=1e-5, atol=1e-6)
    assert not np.allclose(mixed.model.W[0], mixed.model.W[2])  # different sets, same size


def test_variants_train():
    """Privileged basis: dense features land on single neurons. |x|: the MLP computes it."""
    train = toy.ToyTrainConfig(steps=2000, batch_size=512, lr=3e-3, progress=False)
    priv = toy.train_toys(toy.ToyConfig(6, 3, "hidden_relu"), [1.0], toy.geometric_importance(6, 0.75), train)
    W = np.abs(np.asarray(priv.model.W)[0])  # [feature, neuron]
    top = W[:3] / np.linalg.norm(W[:3], axis=1, keepdims=True)
    assert top.max(1).min() > 0.9 and len(set(top.argmax(1))) == 3  # one neuron each
    absolute = toy.train_toys(toy.ToyConfig(3, 12, "abs"), [1.0], np.ones(3),
                              toy.ToyTrainConfig(steps=1000, batch_size=512, lr=1e-2, progress=False))
    assert absolute.final_loss[0] < 0.01 / 12  # the best constant guess of |x| scores 1/12


def test_non_finite_loss_is_reported():
    with pytest.raises(NonFiniteLossError, match="instances"):
        toy.train_toys(toy.ToyConfig(4, 2), [1.0], np.ones(4),
                       toy.ToyTrainConfig(steps=10, lr=1e30, batch_size=32, progress=False))


SHARDED = r"""
import json
import jax, numpy as np
from jaxinterp.models import toy
assert len(jax.devices()) == 8
train = toy.ToyTrainConfig(steps=30, batch_size=128, progress=False)
p = np.linspace(0.05, 1.0, 11)  # 11 instances: padded to fill 8 devices
sharded = toy.train_toys(toy.ToyConfig(6, 2), p, np.ones(6), train)
single = toy.train_toys(toy.ToyConfig(6, 2), p, np.ones(6), train, devices=jax.devices()[:1])
print(json.dumps({
    "devices": [sharded.n_devices, single.n_devices],
    "W": float(np.abs(sharded.model.W - single.model.W).max()),
    "loss": float(np.abs(sharded.loss_history - single.loss_history).max()),
}))
"""


def test_sharded_over_eight_devices_equals_one_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    out = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == [8, 1]
    assert result["W"] < 1e-5 and result["loss"] < 1e-6, result
