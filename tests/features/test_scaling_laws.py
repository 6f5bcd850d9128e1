"""Scaling-law fits recover known exponents from a synthetic sweep, with honest intervals."""

import numpy as np
import pytest

from jaxinterp.errors import ConfigError
from jaxinterp.features.scaling_laws import fit_with_bootstrap, optimum, power_law


def test_power_law_and_parabola_optimum():
    x = np.geomspace(1e3, 1e6, 7)
    p, y0 = power_law(x, 3.0 * x**-0.4)
    assert p == pytest.approx(-0.4) and y0 == pytest.approx(3.0)
    widths = np.geomspace(64, 4096, 7)
    n, loss, inside = optimum(widths, np.exp((np.log(widths) - np.log(500.0)) ** 2) * 0.2)
    assert n == pytest.approx(500.0, rel=1e-6) and loss == pytest.approx(0.2) and inside
    n, _, inside = optimum(widths, 1.0 / widths)                       # still falling at the edge
    assert n == pytest.approx(4096) and not inside
    with pytest.raises(ConfigError):
        power_law([2.0, 2.0], [1.0, 2.0])


def test_fit_recovers_the_exponents_of_a_known_loss_surface():
    """L(N, S) = A N^-a + B S^-b with S = C / (6 T N) has N* ~ C^(b/(a+b)),
    S* ~ C^(a/(a+b)) and L* ~ C^(-ab/(a+b)); per-token errors carry noise."""
    a, b, T = 0.6, 0.3, 512 * 64
    rng = np.random.default_rng(0)
    runs, losses = [], []
    for C in np.geomspace(1e10, 1e13, 4):
        n_star = (a * 2.0 / b) ** (1 / (a + b)) * (C / (6 * T)) ** (b / (a + b))   # dL/dN = 0
        for n in n_star * np.geomspace(0.25, 4, 7):
            steps = C / (6 * T * n)
            runs.append({"compute": C, "d_sae": n})
            losses.append(2.0 * n**-a + 1.0 * steps**-b)
    tokens = 4000
    variances = rng.gamma(2.0, 1.0, tokens)
    errors = np.asarray(losses)[:, None] * variances[None] * rng.lognormal(0, 0.3, (len(runs), tokens))
    out = fit_with_bootstrap(runs, errors, variances, tokens_per_step=T, n_boot=200, seed=1)
    fit, ci = out["fit"], out["interval"]
    assert fit["beta"] == pytest.approx(b / (a + b), abs=0.04)
    assert fit["gamma"] == pytest.approx(a / (a + b), abs=0.04)
    assert fit["alpha"] == pytest.approx(a * b / (a + b), abs=0.03)
    assert fit["beta"] + fit["gamma"] == pytest.approx(1.0, abs=1e-9)
    for k in ("alpha", "beta", "gamma"):
        assert ci[k][0] <= fit[k] <= ci[k][1] and ci[k][1] - ci[k][0] < 0.1
    assert all(out["frontier"]["interior"])
