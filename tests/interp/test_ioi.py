"""The IOI task: prompt structure, and a trained model that solves it and shows up in a sweep."""

import numpy as np

from jaxinterp.interp import activation_patching, logit_lens
from jaxinterp.interp.ioi import END_POS, NAMES, S2_POS, TOKEN, decode, ioi_batch


def test_prompts_have_the_ioi_structure():
    b = ioi_batch(32, seed=0)
    assert b.clean.shape == b.corrupted.shape == (32, END_POS + 1)
    a, bb, s2 = np.asarray(b.clean[:, 2]), np.asarray(b.clean[:, 4]), np.asarray(b.clean[:, S2_POS])
    io, s = np.asarray(b.io), np.asarray(b.s)
    assert np.all(s2 == s) and np.all((a == io) ^ (bb == io)) and np.all((a == s) ^ (bb == s))
    names = {TOKEN[n] for n in NAMES}
    corrupt = np.asarray(b.corrupted[:, S2_POS])
    assert all(c in names and c != i and c != t for c, i, t in zip(corrupt, io, s, strict=True))
    assert np.all(np.delete(np.asarray(b.clean), S2_POS, 1) == np.delete(np.asarray(b.corrupted), S2_POS, 1))
    assert decode(b.clean[0])[0] == "<bos>" and len(set(map(tuple, np.asarray(b.clean)))) > 20


def test_trained_model_solves_ioi_and_the_sweep_finds_s2(ioi_model):
    b = ioi_batch(16, seed=3)
    res = activation_patching(ioi_model, b.clean, b.corrupted, b.metric(), "resid_pre")
    assert res.attrs["clean"] > res.attrs["corrupted"] + 3.0
    norm = np.asarray(res.normalized())
    assert norm[0, S2_POS] > 0.95  # patching S2 in at the embeddings restores everything
    other = np.delete(norm[0], S2_POS)
    np.testing.assert_allclose(other, 0.0, atol=1e-5)  # the prompts differ only there
    lens = logit_lens(ioi_model, b.clean, pos=-1)
    io_logit = np.asarray(lens.values[-1])[np.arange(16), np.asarray(b.io)]
    assert np.all(io_logit == np.asarray(lens.values[-1]).max(-1))  # the last layer predicts IO
