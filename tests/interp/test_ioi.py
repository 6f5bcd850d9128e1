"""A model trained on IOI solves it, and the residual sweep finds S2."""

import numpy as np

from jaxinterp.data.ioi import S2_POS, ioi_batch
from jaxinterp.interp import activation_patching, logit_diff, logit_lens


def test_trained_model_solves_ioi_and_the_sweep_finds_s2(ioi_model):
    b = ioi_batch(16, seed=3)
    res = activation_patching(ioi_model, b.clean, b.corrupted, logit_diff(b.io, b.s), "resid_pre")
    assert res.attrs["clean"] > res.attrs["corrupted"] + 3.0
    norm = np.asarray(res.normalized())
    assert norm[0, S2_POS] > 0.95  # patching S2 in at the embeddings restores everything
    other = np.delete(norm[0], S2_POS)
    np.testing.assert_allclose(other, 0.0, atol=1e-5)  # the prompts differ only there
    lens = logit_lens(ioi_model, b.clean, pos=-1)
    io_logit = np.asarray(lens.values[-1])[np.arange(16), np.asarray(b.io)]
    assert np.all(io_logit == np.asarray(lens.values[-1]).max(-1))  # the last layer predicts IO
