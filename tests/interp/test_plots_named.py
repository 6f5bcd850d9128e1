"""Heatmaps from NamedArrays, and NamedArray's own checks."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.errors import ShapeError
from jaxinterp.interp import NamedArray
from jaxinterp.viz import heatmap, heatmaps, line_plot


def test_named_array():
    a = NamedArray(jnp.arange(6.0).reshape(2, 3), ("layer", "pos"), {"pos": ["a", "b", "c"]},
                   {"clean": 5.0, "corrupted": 0.0})
    assert a.sizes() == {"layer": 2, "pos": 3} and np.asarray(a).shape == (2, 3)
    assert a.sel(layer=1).labels == {"pos": ["a", "b", "c"]}
    np.testing.assert_allclose(a.normalized().values, np.arange(6.0).reshape(2, 3) / 5)
    with pytest.raises(ShapeError):
        NamedArray(jnp.zeros((2, 3)), ("layer",))
    with pytest.raises(ShapeError, match="labels"):
        NamedArray(jnp.zeros((2, 3)), ("layer", "pos"), {"pos": ["a"]})
    with pytest.raises(ShapeError, match="unknown axes"):
        a.sel(head=0)


def test_plots_write_pngs(tmp_path):
    a = NamedArray(jnp.array([[0.0, 1.0, -2.0], [0.5, 0.0, 0.2]]), ("layer", "pos"), {"pos": ["<bos>", "A", "B"]})
    for path in (heatmap(a, tmp_path / "one.png", title="sweep"),
                 heatmaps({"exact": a, "attribution": a.values * 0.9}, tmp_path / "two.png"),
                 line_plot({"p(IO)": [0.1, 0.5, 0.9]}, tmp_path / "sub" / "lens.png", xlabels=["0", "1", "2"])):
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ShapeError, match="2-D"):
        heatmap(jnp.zeros(3), tmp_path / "bad.png")


def test_attention_grid_draws_every_head_under_its_real_layer():
    from jaxinterp.viz import attention_figure

    p = np.full((2, 9, 5, 5), 0.2)
    fig = attention_figure(p, list("abcde"), layers=[17, 18])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"L{layer}H{h}" for layer in (17, 18) for h in range(9)]
    with pytest.raises(ShapeError, match="layer indices"):
        attention_figure(p, None, layers=[17])


def test_colour_map_follows_the_sign_of_the_data(tmp_path):
    from jaxinterp.viz import plots

    assert plots._cmap(None, plots._signed([np.array([0.0, 0.5])])) == "viridis"
    assert plots._cmap(None, plots._signed([np.array([-0.1, 0.5])])) == "RdBu_r"
    a = NamedArray(jnp.ones((2, 2)), ("layer", "head"), attrs={"clean": 2.0, "corrupted": 0.0})
    assert plots._label(a.normalized(), None).startswith("normalised metric")
    assert plots._label(NamedArray(jnp.ones((1, 1)), ("a", "b"), attrs={"label": "induction score"}), None) == "induction score"
