"""What an SAE is: :class:`SAEConfig`, one frozen description for the whole family.

Every architecture shares the same skeleton (see :mod:`jaxinterp.sae.sae`)::

    pre    = (x - b_dec) @ W_enc + b_enc          # b_dec subtracted if apply_b_dec_to_input
    acts   = activation(pre)                      # what differs between architectures
    x_hat  = acts @ W_dec + b_dec  (+ x @ W_skip.T for a skip transcoder)

``architecture`` names the activation and its sparsity loss, with SAELens's names:

=========================  =================================================================
``standard`` (``relu``)    ReLU; L1 penalty, weighted by decoder norm (April 2024) or plain
``topk``                   keep the k largest pre-activations per token (Gao et al. 2024)
``batchtopk``              keep the k * batch largest over the batch; infers with a threshold
``matryoshka_batchtopk``   BatchTopK whose dictionary prefixes each reconstruct the input
``jumprelu``               ``pre * (pre > threshold)``, L0 (step) or tanh loss, STE gradients
``gated``                  a gate path decides which latents fire, a magnitude path how much
=========================  =================================================================

A *transcoder* is the same thing reading one site and writing another: set ``d_out`` (and
``hook_name_out``); ``skip_connection`` adds a linear skip term ``x @ W_skip.T``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from jaxinterp.errors import ConfigError

ARCHITECTURES = ("standard", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "gated")
_ALIASES = {"relu": "standard", "l1": "standard", "matryoshka": "matryoshka_batchtopk"}
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka_batchtopk")
THRESHOLDED = ("jumprelu", "batchtopk", "matryoshka_batchtopk")  # have a ``threshold`` [d_sae]


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """An SAE or transcoder of the family (fields follow SAELens where it has them).

    Attributes:
        d_in: width of the activations read (the hook site's last axis).
        d_sae: number of latents (dictionary size).
        architecture: one of :data:`ARCHITECTURES` (``"relu"`` is an alias of ``standard``).
        d_out: output width for a transcoder; ``None`` for an autoencoder (``d_out = d_in``).
        skip_connection: transcoders only: add ``x @ W_skip.T`` (``W_skip [d_out, d_in]``).
        k: active latents per token (TopK), or on average per token (BatchTopK family).
        matryoshka_widths: increasing prefix sizes ending at ``d_sae`` (Matryoshka).
        l1_coefficient: weight of the L1 penalty (standard, gated).
        l1_decoder_norm: weight each ``|f_i|`` by ``||W_dec[i]||`` (Anthropic, April 2024).
        l0_coefficient: weight of JumpReLU's sparsity loss.
        jumprelu_sparsity_loss: ``"step"`` (L0 through the step function's STE) or ``"tanh"``
            (``tanh(c * f_i * ||W_dec[i]||)``, Anthropic's smooth L0).
        jumprelu_bandwidth: width of the rectangle kernel of the straight-through gradients.
        jumprelu_init_threshold: starting threshold.
        jumprelu_tanh_scale: ``c`` of the tanh loss.
        aux_k_coefficient: weight of the auxiliary-k loss on dead latents (TopK family).
        apply_b_dec_to_input: subtract ``b_dec`` from the input before encoding.
        decoder_norm: ``"unit"`` (decoder rows projected to norm 1 after every step),
            ``"none"``, or ``"auto"``: unit unless the L1 penalty is weighted by the norm.
        normalize_activations: ``"none"`` or ``"expected_average_only_in"``: the trainer
            scales inputs to mean norm ``sqrt(d_in)`` and folds the scale back at the end.
        hook_name: the site read (``blocks.0.mlp.hook_post``); metadata, used by splicing.
        hook_name_out: the site written, for transcoders.
        dtype: parameter dtype name.
    """

    d_in: int
    d_sae: int
    architecture: str = "standard"
    d_out: int | None = None
    skip_connection: bool = False
    k: int = 32
    matryoshka_widths: tuple[int, ...] = ()
    l1_coefficient: float = 5.0
    l1_decoder_norm: bool = True
    l0_coefficient: float = 1.0
    jumprelu_sparsity_loss: str = "step"
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.01
    jumprelu_tanh_scale: float = 4.0
    aux_k_coefficient: float = 1 / 32
    apply_b_dec_to_input: bool = True
    decoder_norm: str = "auto"
    normalize_activations: str = "none"
    hook_name: str = ""
    hook_name_out: str = ""
    dtype: str = "float32"

    def __post_init__(self) -> None:
        arch = _ALIASES.get(self.architecture, self.architecture)
        object.__setattr__(self, "architecture", arch)
        object.__setattr__(self, "matryoshka_widths", tuple(int(w) for w in self.matryoshka_widths))
        if arch not in ARCHITECTURES:
            raise ConfigError(f"Unknown SAE architecture {self.architecture!r}; expected one of "
                              f"{', '.join(ARCHITECTURES)} (or 'relu').")
        for name in ("d_in", "d_sae", "k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"SAEConfig.{name} must be a positive int, got {value!r}.")
        if self.d_out is not None and (not isinstance(self.d_out, int) or self.d_out < 1):
            raise ConfigError(f"SAEConfig.d_out must be a positive int or None, got {self.d_out!r}.")
        if arch in TOPK_FAMILY and self.k > self.d_sae:
            raise ConfigError(f"k={self.k} is larger than d_sae={self.d_sae}; a TopK SAE keeps "
                              "at most d_sae latents active.")
        if self.skip_connection and self.d_out is None:
            raise ConfigError("skip_connection is for transcoders; set d_out (and hook_name_out).")
        if self.d_out is not None and self.apply_b_dec_to_input:
            object.__setattr__(self, "apply_b_dec_to_input", False)  # b_dec lives in d_out
        if arch == "matryoshka_batchtopk":
            widths = self.matryoshka_widths or (self.d_sae,)
            if widths[-1] != self.d_sae:
                widths = widths + (self.d_sae,)
            if any(b <= a for a, b in zip(widths, widths[1:], strict=False)) or widths[0] < 1:
                raise ConfigError(f"matryoshka_widths must increase strictly from >= 1 to d_sae="
                                  f"{self.d_sae}; got {self.matryoshka_widths}.")
            object.__setattr__(self, "matryoshka_widths", widths)
        elif self.matryoshka_widths:
            raise ConfigError("matryoshka_widths is only used by architecture='matryoshka_batchtopk'.")
        choices = {
            "jumprelu_sparsity_loss": ("step", "tanh"),
            "decoder_norm": ("auto", "unit", "none"),
            "normalize_activations": ("none", "expected_average_only_in"),
            "dtype": ("float32", "bfloat16", "float16", "float64"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"SAEConfig.{name} must be one of {allowed}, got "
                                  f"{getattr(self, name)!r}.")
        for name in ("l1_coefficient", "l0_coefficient", "aux_k_coefficient", "jumprelu_bandwidth"):
            if not float(getattr(self, name)) >= 0:
                raise ConfigError(f"SAEConfig.{name} must be >= 0, got {getattr(self, name)!r}.")

    # Derived sizes and choices -------------------------------------------------------
    @property
    def d_target(self) -> int:
        """Width of the output: ``d_out`` for a transcoder, else ``d_in``."""
        return self.d_in if self.d_out is None else self.d_out

    @property
    def is_transcoder(self) -> bool:
        return self.d_out is not None

    @property
    def unit_decoder(self) -> bool:
        """Whether training keeps every decoder row at norm 1."""
        if self.decoder_norm == "auto":
            weighted = self.architecture in ("standard", "gated") and self.l1_decoder_norm
            return not weighted
        return self.decoder_norm == "unit"

    # Serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["matryoshka_widths"] = list(self.matryoshka_widths)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"Unknown SAEConfig fields {unknown}; known: {sorted(known)}.")
        return cls(**d)

    def fingerprint(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
