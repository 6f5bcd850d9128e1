"""One toy model's training step, with the loss gradient in closed form.

For the tied model ``x' = out(act(x W) W^T + b)`` and the importance-weighted MSE
``L = sum_b c_b (1/n) sum_i I_i (out_bi - x_bi)^2`` (``c_b = 1/B``, or the example
weights over their sum), the gradient is, with everything feature-major (``X^T`` is
``[n, B]``: a feature's values over the batch are contiguous, so every element-wise loop
below is vectorised along the batch)::

    A^T = W^T X^T          H^T = act(A^T)            O^T = W H^T + b
    D   = (2/n) I (out(O) - X) out'(O) c               (the gradient at O, [n, B])
    dA  = (W^T D) act'(A)                              ([m, B])
    dL/dW = X^T dA^T + D H                             ([n, m])
    dL/db = sum_b D

``act`` is the identity (``"linear"``, ``"relu"``) or ReLU (``"hidden_relu"``); ``out``
is ReLU except for ``"linear"``; ReLU's derivative at 0 is 0, as in ``jax.nn.relu``. The
contractions are tiny (``n=20, m=5``), and which form XLA:CPU runs fastest was measured
per contraction (``experiments/benchmarks/RESULTS_toy.md``): ``A^T = W^T X^T`` is a
matmul (as a 20-term unrolled sum the whole step took 10-15% longer); ``W H^T`` and
``W^T D`` are sums of broadcast products (:func:`contract`), which XLA fuses with their
element-wise neighbours into one vectorised loop (``W^T D`` as a matmul: 1.5x the step;
``W H^T``: no gain); contractions over the batch are matmuls. The loss is reduced over
the batch as ``sum_b c_b err^2``, so XLA fuses the square into the reduction. With fresh
data every step (:class:`OnlineFeatures`) the trainer reports the loss of the first
``loss_examples`` (1/8) of each batch, an unbiased estimate of the same expectation,
so ``err`` is not written out for a full-batch reduction (that cost ~15% of the step);
the gradient always uses the whole batch. Autodiff of the same loss gives the same
numbers (tested) at about twice the time (``experiments/benchmarks/RESULTS_toy.md``). The untied ``abs``
model (:class:`ToyMLP`) uses autodiff.

The step's data is drawn from the instance's two key words with the step index as the
Threefry stream (:meth:`OnlineFeatures.sample_t`): no key splitting inside the loop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float

from jaxinterp.models.toy.model import Toy, ToyConfig, ToyModel, importance_weighted_mse, target

SMALL = 32  # contractions over at most this many entries are unrolled into fused loops


def contract(a: Float[Array, "k j"], xt: Float[Array, "k batch"]) -> Float[Array, "j batch"]:
    """``a^T @ xt`` for a short contraction axis ``k``: a sum of ``k`` broadcast products
    (one fused loop over ``[j, batch]``), or a matmul when ``k > SMALL``."""
    if a.shape[0] > SMALL:
        return a.T @ xt
    return functools.reduce(lambda acc, k: acc + a[k][:, None] * xt[k], range(1, a.shape[0]),
                            a[0][:, None] * xt[0])


def tied_loss_and_grad(
    model: ToyModel,
    xt: Float[Array, "feature batch"],
    importance: Float[Array, " feature"],
    weights: Float[Array, " batch"] | None = None,
    loss_examples: int = 0,
) -> tuple[Float[Array, ""], ToyModel]:
    """The importance-weighted MSE of a tied toy model on a feature-major batch, and its
    gradient with respect to ``W`` and ``b_final`` (formulas in the module docstring).
    ``loss_examples > 0`` (unweighted batches only): the returned loss is measured on the
    batch's first ``loss_examples`` examples; the gradient still uses all of them."""
    n, batch = xt.shape
    W, variant = model.W, model.variant
    c = (jnp.full((batch,), 1.0 / batch, xt.dtype) if weights is None
         else weights / jnp.maximum(jnp.sum(weights), 1.0))
    at = W.T @ xt  # [m, B]: a matmul (measured faster here than contract)
    ht = jnp.maximum(at, 0.0) if variant == "hidden_relu" else at
    ot = contract(W.T, ht) + model.b_final[:, None]  # [n, B]
    err = (ot if variant == "linear" else jnp.maximum(ot, 0.0)) - xt
    coef = importance / n
    # The loss as a weighted sum of squares reduced over the batch: XLA fuses err^2 into
    # the reduction instead of materialising ``coef * err * c`` for it.
    if loss_examples and weights is None and loss_examples < batch:
        e = err[:, :loss_examples]
        loss = jnp.dot(coef, jnp.sum(e * e, axis=1)) / loss_examples
    else:
        loss = jnp.dot(coef, jnp.sum(err * err * c[None, :], axis=1))
    scaled = coef[:, None] * err * c[None, :]
    d = 2.0 * scaled if variant == "linear" else jnp.where(ot > 0, 2.0 * scaled, 0.0)
    da = contract(W, d)  # [m, B]
    if variant == "hidden_relu":
        da = jnp.where(at > 0, da, 0.0)
    grad_W = xt @ da.T + d @ ht.T
    return loss, ToyModel(grad_W, jnp.sum(d, axis=1), variant)


def loss_and_grad(cfg: ToyConfig, model: Toy, xt, importance, weights=None, loss_examples=0):
    """:func:`tied_loss_and_grad`, or autodiff (loss on the whole batch) for the untied
    ``abs`` model."""
    if isinstance(model, ToyModel):
        return tied_loss_and_grad(model, xt, importance, weights, loss_examples)
    x = xt.T

    def loss(m):
        return importance_weighted_mse(jax.vmap(m)(x), target(cfg, x), importance, weights)

    return jax.value_and_grad(loss)(model)


def make_instance_step(cfg: ToyConfig, opt: optax.GradientTransformation):
    """One instance's update ``(model, opt_state, source, importance, key_words, t) ->
    (model, opt_state, loss)``, where ``key_words`` (``uint32[2]``) is the instance's data
    key and ``t`` the step; the trainer ``vmap``s it (the benchmark also loops over it)."""

    def step(model, opt_state, source, importance, key_words, t):
        xt, weights = source.sample_t(key_words, t)
        loss, grads = loss_and_grad(cfg, model, xt, importance, weights,
                                    getattr(source, "loss_examples", 0))
        updates, opt_state = opt.update(grads, opt_state, model)
        return optax.apply_updates(model, updates), opt_state, loss

    return step
