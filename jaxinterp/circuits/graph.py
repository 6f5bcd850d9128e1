"""The computational graph of a transformer, as circuit discovery sees it.

The residual stream is a sum: the input to any component is the embedding plus the
outputs of every earlier attention head and MLP (plus constant biases). So the model is
a graph whose *edges* are these residual-stream paths (Elhage et al. 2021; Conmy et al.
2023; Syed et al. 2023):

* source nodes (what writes): ``input`` (token + position embedding), every head
  ``a{l}.h{h}`` (its output ``z W_O``), every MLP ``m{l}``;
* destination nodes (what reads): every head's query, key and value inputs
  ``a{l}.h{h}<q>``, ``<k>``, ``<v>`` (or one input ``a{l}.h{h}`` with ``qkv=False``), every
  MLP ``m{l}``, and the ``logits`` (the input of the final norm and unembedding);
* an edge ``u -> v`` exists when ``u`` writes before ``v`` reads: heads of layer ``l`` read
  what layers ``< l`` wrote; an MLP also reads its own layer's heads (unless attention and
  MLP run in parallel, as in GPT-NeoX).

Grouped-query models read keys and values once per key/value head: ``a{l}.kv{g}<k>``.
Names follow Hanna et al.'s EAP-IG library, so their circuits and ours read alike.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property

import numpy as np

from jaxinterp.errors import ConfigError, unknown_name_message
from jaxinterp.models.config import TransformerConfig


@dataclasses.dataclass(frozen=True)
class Graph:
    """Nodes and edges of a model's residual-stream graph (see the module docstring)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    has_mlp: bool
    parallel: bool
    qkv: bool

    @classmethod
    def from_config(cls, cfg: TransformerConfig, qkv: bool = True) -> Graph:
        if cfg.n_layers < 1:
            raise ConfigError("circuit discovery needs a model with at least one layer")
        if cfg.use_normalization_before_and_after:
            raise ConfigError(f"{cfg.model_name}: its sublayer outputs are normalised after the heads are summed "
                              "(ln1_post/ln2_post), so single heads' outputs are not residual-stream edges; "
                              "the edge graph needs a pre-norm model")
        if not qkv and cfg.n_kv_heads != cfg.n_heads:
            raise ConfigError("a grouped-query model shares keys/values between heads: use qkv=True, "
                              "which gives each key/value head its own <k> and <v> input")
        return cls(cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.has_mlp, cfg.parallel_attn_mlp, bool(qkv))

    # Layout ----------------------------------------------------------------------------
    @property
    def per_layer_src(self) -> int:
        """Source nodes per layer: the heads, then the MLP."""
        return self.n_heads + int(self.has_mlp)

    @property
    def n_attn_in(self) -> int:
        """Attention inputs per layer: q per head, then k and v per key/value head (or one per head)."""
        return self.n_heads + 2 * self.n_kv_heads if self.qkv else self.n_heads

    @property
    def per_layer_dst(self) -> int:
        return self.n_attn_in + int(self.has_mlp)

    @cached_property
    def src_names(self) -> tuple[str, ...]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)]
            names += [f"m{layer}"] if self.has_mlp else []
        return tuple(names)

    @cached_property
    def dst_names(self) -> tuple[str, ...]:
        names = []
        kv = "h" if self.n_kv_heads == self.n_heads else "kv"
        for layer in range(self.n_layers):
            if self.qkv:
                names += [f"a{layer}.h{h}<q>" for h in range(self.n_heads)]
                names += [f"a{layer}.{kv}{g}<{x}>" for x in "kv" for g in range(self.n_kv_heads)]
            else:
                names += [f"a{layer}.h{h}" for h in range(self.n_heads)]
            names += [f"m{layer}"] if self.has_mlp else []
        return tuple(names + ["logits"])

    @property
    def n_src(self) -> int:
        return len(self.src_names)

    @property
    def n_dst(self) -> int:
        return len(self.dst_names)

    def _write_read(self) -> tuple[np.ndarray, np.ndarray]:
        """When each source writes and each destination reads (attention of layer l at
        step 2l+1, a sequential MLP at 2l+2): an edge exists when write < read."""
        mlp_step = 1 if self.parallel else 2
        write = [0]
        for layer in range(self.n_layers):
            write += [2 * layer + 1] * self.n_heads + ([2 * layer + mlp_step] if self.has_mlp else [])
        read = []
        for layer in range(self.n_layers):
            read += [2 * layer + 1] * self.n_attn_in + ([2 * layer + mlp_step] if self.has_mlp else [])
        read.append(2 * self.n_layers + 1)
        return np.asarray(write), np.asarray(read)

    @cached_property
    def valid(self) -> np.ndarray:
        """``[n_src, n_dst]`` bool: which edges exist."""
        write, read = self._write_read()
        return write[:, None] < read[None, :]

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    @cached_property
    def feeds(self) -> np.ndarray:
        """``[n_dst, n_src]`` bool: the source node(s) each destination is an input of (a
        key/value input of a grouped-query model feeds every head of its group)."""
        out = np.zeros((self.n_dst, self.n_src), bool)
        group = self.n_heads // self.n_kv_heads
        for layer in range(self.n_layers):
            v0, u0 = layer * self.per_layer_dst, 1 + layer * self.per_layer_src
            heads = u0 + np.arange(self.n_heads)
            out[v0 + np.arange(self.n_heads), heads] = True  # q (or the one input) -> its head
            if self.qkv:
                for x in range(2):  # k, v -> the heads of their group
                    rows = v0 + self.n_heads + x * self.n_kv_heads + np.arange(self.n_heads) // group
                    out[rows, heads] = True
            if self.has_mlp:
                out[v0 + self.n_attn_in, u0 + self.n_heads] = True
        return out

    # Names -----------------------------------------------------------------------------
    def src_index(self, name: str) -> int:
        try:
            return self.src_names.index(name)
        except ValueError:
            raise ConfigError(unknown_name_message("source node", str(name), self.src_names)) from None

    def dst_index(self, name: str) -> int:
        try:
            return self.dst_names.index(name)
        except ValueError:
            raise ConfigError(unknown_name_message("destination node", str(name), self.dst_names)) from None

    def edge_index(self, src: str, dst: str) -> tuple[int, int]:
        u, v = self.src_index(src), self.dst_index(dst)
        if not self.valid[u, v]:
            raise ConfigError(f"there is no edge {src} -> {dst}: {dst} reads the residual stream "
                              f"before {src} writes to it")
        return u, v

    def edges(self) -> list[tuple[str, str]]:
        us, vs = np.nonzero(self.valid)
        return [(self.src_names[u], self.dst_names[v]) for u, v in zip(us, vs, strict=True)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
