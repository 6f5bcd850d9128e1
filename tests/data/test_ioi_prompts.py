"""The IOI prompts: the roles at their positions, and a corruption that changes only S2."""

import numpy as np

from jaxinterp.data.ioi import END_POS, NAMES, S2_POS, TOKEN, decode, ioi_batch


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
