"""Bad input gets a clear jaxinterp error naming the problem: through the API and the CLI.

Each row: what is done, the error class, a fragment of the message. CLI rows also check
that the command printed ``error: ...`` with no traceback, exited with status 2, and left
no run folder behind.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp import cli
from jaxinterp.errors import (
    ArgumentTypeError,
    CheckpointError,
    ConfigError,
    DataError,
    HookNameError,
    IndexRangeError,
    ShapeError,
    TokenError,
)
from jaxinterp.interp import ablate_neurons, knockout_edges

CFG = ji.gpt2_config(d_model=32, n_layers=2, n_heads=4, d_vocab=64, n_ctx=16)


@pytest.fixture(scope="module")
def env():
    model = ji.init_transformer(CFG, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, CFG.d_vocab)
    _, cache = ji.run_with_cache(model, tokens, names="blocks.*.attn.hook_pattern")
    return model, tokens, cache


def hooks(env, *ivs, **kw):
    model, tokens, _ = env
    return ji.run_with_hooks(model, tokens, interventions=list(ivs), **kw)


def sweep(env, metric, component="resid_pre", **kw):
    model, tokens, _ = env
    return ji.activation_patching(model, tokens, tokens[::-1], metric, component, **kw)


API = [
    ("pos past the end", lambda e: hooks(e, ji.patch("blocks.*.hook_resid_pre", 0.0, layer=0, pos=40)),
     IndexRangeError, "position 40 is out of range"),
    ("head past the end", lambda e: hooks(e, ji.patch("blocks.*.attn.hook_z", 0.0, layer=0, head=9)),
     IndexRangeError, "head 9 is out of range"),
    ("layer past the end", lambda e: hooks(e, ji.patch("blocks.*.hook_resid_pre", 0.0, layer=5)),
     IndexRangeError, "layer 5 is out of range"),
    ("negative layer past the start", lambda e: hooks(e, ji.patch("blocks.*.hook_resid_pre", 0.0, layer=-3)),
     IndexRangeError, "layer -3"),
    ("float position", lambda e: ji.patch("hook_embed", 0.0, pos=1.5), IndexRangeError, "must be an int"),
    ("layer on an unlayered hook", lambda e: hooks(e, ji.patch("hook_embed", 0.0, layer=0)),
     HookNameError, "matches no hook inside a layer"),
    ("head on a hook without heads", lambda e: hooks(e, ji.patch("hook_embed", 0.0, head=1)),
     ShapeError, "no head axis"),
    ("add vector of the wrong size", lambda e: hooks(e, ji.add("blocks.0.hook_resid_pre", jnp.ones(5))),
     ShapeError, "does not broadcast"),
    ("patch source of the wrong shape", lambda e: hooks(e, ji.patch("blocks.0.hook_resid_pre", jnp.ones((3, 3)))),
     ShapeError, "does not broadcast"),
    ("unknown hook name", lambda e: hooks(e, ji.patch("blocks.0.hook_resid_prx", 0.0)),
     HookNameError, "blocks.0.hook_resid_pre"),
    ("interventions as a string", lambda e: ji.run_with_hooks(e[0], e[1], interventions="blocks.0.hook_z"),
     ArgumentTypeError, "Intervention"),
    ("a TransformerLens pair in interventions",
     lambda e: ji.run_with_hooks(e[0], e[1], interventions=[("blocks.0.hook_z", lambda x, hook: x)]),
     ArgumentTypeError, "fwd_hooks"),
    ("bad fwd_hooks item", lambda e: ji.run_with_hooks(e[0], e[1], fwd_hooks=["blocks.0.hook_resid_pre"]),
     ArgumentTypeError, "(name, hook_fn)"),
    ("edit without a function", lambda e: ji.edit("hook_embed", 3.0), ArgumentTypeError, "function"),
    ("missing cache entry", lambda e: e[2]["blocks.0.hook_resid_pre"], HookNameError, "names asked for"),
    ("cache layer out of range", lambda e: e[2]["pattern", 5], IndexRangeError, "layer 5"),
    ("unknown short name", lambda e: ji.get_act_name("resid_preee", 0), HookNameError, "resid_pre"),
    ("hook name used as a component", lambda e: sweep(e, ji.logit_diff(1, 2), "hook_z"),
     HookNameError, "component is 'z'"),
    ("metric position past the end", lambda e: sweep(e, ji.logit_diff(1, 2, pos=40)),
     IndexRangeError, "position 40"),
    ("float answer tokens", lambda e: ji.logit_diff(1.5, 2), ShapeError, "token id"),
    ("answer token outside the vocabulary", lambda e: ji.logit_diff(99, 2)(jnp.zeros((2, 8, 64))),
     IndexRangeError, "token id 99"),
    ("ragged token lists", lambda e: e[0]([[1, 2, 3], [4]]), ShapeError, "same length"),
    ("token id outside the vocabulary", lambda e: e[0]([1, 2, 70]), TokenError, "70"),
    ("text without a tokenizer", lambda e: e[0]("hello"), ConfigError, "no tokenizer"),
    ("sequence longer than n_ctx", lambda e: e[0](jnp.zeros((1, 20), jnp.int32)), TokenError, "n_ctx"),
    ("float tokens", lambda e: e[0](jnp.zeros((1, 4))), ShapeError, "integers"),
    ("knockout edge past the end", lambda e: knockout_edges(e[0], 0, [(2, 9)], n_pos=8),
     IndexRangeError, "key position 9"),
    ("neuron past the end", lambda e: ablate_neurons(e[0], [(0, 128)]), IndexRangeError, "neuron 128"),
    ("path patching sender head", lambda e: ji.path_patching(e[0], e[1], e[1][::-1], ji.logit_diff(1, 2),
                                                              [(0, 7)], "logits"), IndexRangeError, "head 7"),
    ("DLA position", lambda e: ji.direct_logit_attribution(e[0], e[1], 1, 2, pos=8), IndexRangeError, "position 8"),
    ("NamedArray index", lambda e: ji.NamedArray(jnp.zeros((2, 3)), ("layer", "head")).sel(layer=2),
     IndexRangeError, "axis 'layer'"),
    ("attention plot of the wrong rank", lambda e: ji.viz.attention_patterns(np.zeros((3, 4)), None, "x.png"),
     ShapeError, "[layer, head, query, key]"),
    ("no checkpoint there", lambda e: ji.from_pretrained("/nonexistent/model"), CheckpointError, "No checkpoint"),
]


@pytest.mark.parametrize("what,fn,error,fragment", API, ids=[row[0] for row in API])
def test_api_bad_input(env, what, fn, error, fragment):
    with pytest.raises(error) as info:
        fn(env)
    assert fragment in str(info.value), str(info.value)
    assert isinstance(info.value, ji.JaxinterpError)


CLI = [
    (["train", "--steps", "0"], "--steps must be a positive int"),
    (["train", "--lr", "nan"], "--lr must be a finite number"),
    (["train", "--seq-len", "100000"], "GiB of activations"),
    (["train", "--d-model", "-4"], "--d-model must be a positive int"),
    (["train", "--n-heads", "3"], "must divide --d-model"),
    (["train", "--val-fraction", "0.9"], "--val-fraction"),
    (["train", "--steps", "abc"], "--steps expects int"),
    (["train", "--stepz", "4"], "did you mean --steps"),
    (["train", "--config", "/nonexistent.json"], "cannot read --config"),
    (["train", "--corpus", "/nonexistent/corpus.txt", "--tokenizer", "bytes"], "/nonexistent/corpus.txt"),
    (["train", "--positional-embedding-type", "alibi"], "positional-embedding-type"),
    (["experiment", "nope"], "Unknown experiment 'nope'"),
    (["experiment", "ioi", "--layers=-1"], "--layers must be an int >= 0"),
    (["experiment", "ioi", "--layerz", "2"], "did you mean --layers"),
    (["experiment", "ioi", "--checkpoint", "/nonexistent.safetensors"], "no such file"),
    (["demo", "--sae-batch", "0"], "--sae-batch must be a positive int"),
]


@pytest.mark.parametrize("argv,fragment", CLI, ids=[" ".join(a) for a, _ in CLI])
def test_cli_bad_input(tmp_path, capsys, argv, fragment):
    runs = tmp_path / "runs"
    code = cli.main(argv + ["--runs-dir", str(runs), "--name", "bad"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and fragment in err, err
    assert "Traceback" not in err
    assert not (runs / "bad").exists()


def test_cli_debug_shows_the_traceback(capsys, tmp_path):
    assert cli.main(["train", "--steps", "0", "--debug", "--runs-dir", str(tmp_path)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_data_error_class_for_missing_corpus(tmp_path):
    from jaxinterp.data import load_text_files

    with pytest.raises(DataError):
        load_text_files([str(tmp_path / "missing.txt")])
