"""Writes tl_composition.npz: random attention weights and TransformerLens's
``all_composition_scores`` on them (Q, K, V), so the test needs neither torch nor
TransformerLens at run time. Rerun after a TransformerLens upgrade:

    PYTHONPATH=. python tests/circuits/data/make_tl_composition.py
"""

from pathlib import Path

import numpy as np
import torch
import transformer_lens as tl

L, H, d, e = 3, 4, 32, 8
rng = np.random.default_rng(0)
weights = {k: rng.normal(0, 0.2, (L, H, d, e) if k != "W_O" else (L, H, e, d)).astype(np.float32)
           for k in ("W_Q", "W_K", "W_V", "W_O")}
cfg = tl.HookedTransformerConfig(n_layers=L, d_model=d, n_heads=H, d_head=e, d_vocab=30, n_ctx=8,
                                 act_fn="gelu_new", attn_only=True, device="cpu")
model = tl.HookedTransformer(cfg)
state = model.state_dict()
for layer in range(L):
    for name, w in weights.items():
        state[f"blocks.{layer}.attn.{name}"] = torch.tensor(w[layer])
model.load_state_dict(state)
scores = {f"scores_{m}": model.all_composition_scores(m).detach().numpy() for m in "QKV"}
np.savez(Path(__file__).with_name("tl_composition.npz"), **weights, **scores,
         transformer_lens_version=np.array(tl.__version__ if hasattr(tl, "__version__") else "unknown"))
print("wrote", Path(__file__).with_name("tl_composition.npz"))
