"""A hand-built model whose heads have known behaviour (imported by conftest and tests)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import jaxinterp as ji

N_CTX, VOCAB = 24, 12
# residual stream: [position one-hot (N_CTX) | token one-hot (VOCAB) | previous token (VOCAB)]
POS, TOK, PREV = 0, N_CTX, N_CTX + VOCAB
D_MODEL = N_CTX + 2 * VOCAB


def hand_built_model() -> ji.HookedTransformer:
    """Two layers of two heads, no norms, attention scale 1:

    * L0H0 previous-token head, writing the previous token into the PREV subspace;
    * L0H1 duplicate-token head (attends to earlier copies of its token, not itself);
    * L1H0 induction head: queries its token, keys the PREV subspace (K-composition with
      L0H0), and copies the attended token to the logits;
    * L1H1 does nothing (zero weights: uniform attention, zero output).
    """
    cfg = ji.attn_only_config(n_layers=2, d_model=D_MODEL, n_heads=2, d_vocab=VOCAB, n_ctx=N_CTX,
                              normalization_type=None, attn_scale=1.0, use_attn_bias=False)
    cfg = cfg.replace(d_head=D_MODEL)
    eye = np.eye(D_MODEL, dtype=np.float32)
    W = {k: np.zeros((2, 2, D_MODEL, D_MODEL), np.float32) for k in ("Q", "K", "V", "O")}
    big = 30.0
    for p in range(1, N_CTX):  # L0H0: position p queries position p - 1
        W["Q"][0, 0, POS + p, POS + p - 1] = big
    W["K"][0, 0] = eye
    for t in range(VOCAB):  # L0H0 writes the attended (previous) token into PREV
        W["V"][0, 0, TOK + t, TOK + t] = 1.0
        W["O"][0, 0, TOK + t, PREV + t] = 1.0
    for t in range(VOCAB):  # L0H1: same token, but never itself
        W["Q"][0, 1, TOK + t, TOK + t] = big
        W["K"][0, 1, TOK + t, TOK + t] = 1.0
    for p in range(N_CTX):
        W["Q"][0, 1, POS + p, POS + p] = -2 * big
        W["K"][0, 1, POS + p, POS + p] = 1.0
    for t in range(VOCAB):  # L1H0: my token against the keys' previous token; copy the key's token
        W["Q"][1, 0, TOK + t, t] = big
        W["K"][1, 0, PREV + t, t] = 1.0
        W["V"][1, 0, TOK + t, t] = 1.0
        W["O"][1, 0, t, TOK + t] = 1.0
    model = ji.init_transformer(cfg, jax.random.key(0))
    W_E = np.zeros((VOCAB, D_MODEL), np.float32)
    W_E[np.arange(VOCAB), TOK + np.arange(VOCAB)] = 1.0
    W_pos = np.zeros((N_CTX, D_MODEL), np.float32)
    W_pos[np.arange(N_CTX), POS + np.arange(N_CTX)] = 1.0
    W_U = np.zeros((D_MODEL, VOCAB), np.float32)
    W_U[TOK + np.arange(VOCAB), np.arange(VOCAB)] = 1.0
    attn = eqx.tree_at(lambda a: (a.W_Q, a.W_K, a.W_V, a.W_O), model.blocks.attn,
                       tuple(jnp.asarray(W[k]) for k in "QKVO"))
    return eqx.tree_at(lambda m: (m.W_E, m.W_pos, m.W_U, m.blocks.attn), model,
                       (jnp.asarray(W_E), jnp.asarray(W_pos), jnp.asarray(W_U), attn))
