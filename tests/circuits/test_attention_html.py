"""Self-contained HTML views: every text escaped, data round-trips, no network."""

import html
import json
import re

import numpy as np
import pytest

from jaxinterp import viz
from jaxinterp.errors import ShapeError

EVIL = ["</script><script>alert(1)</script>", "<b>bold</b>", "a & b", "\"quote'", "line\nbreak", "\u2028"]


def _data(page: str) -> dict:
    block = re.search(r'<script type="application/json" id="[^"]+">(.*?)</script>', page, re.S)
    assert block, "the data block is present"
    return json.loads(block.group(1))


def test_attention_page_escapes_tokens_and_labels(tmp_path):
    n = len(EVIL)
    patterns = np.tril(np.ones((2, 2, n, n))) / np.arange(1, n + 1)[:, None]
    page = viz.attention_html(patterns, EVIL, title="<i>title</i> & more")
    text = page.page()
    assert "<script>alert(1)" not in text and "<b>bold</b>" not in text and "<i>title</i>" not in text
    assert "&lt;i&gt;title&lt;/i&gt; &amp; more" in text
    assert text.count("</script>") == 2  # the data block and the code, nothing from the tokens
    data = _data(text)
    assert data["tokens"][:4] == EVIL[:4] and data["tokens"][4] == "line\u21b5break"
    assert data["labels"] == ["L0H0", "L0H1", "L1H0", "L1H1"]
    np.testing.assert_allclose(np.asarray(data["patterns"]), patterns.reshape(4, n, n).round(3))
    assert "http://" not in text and "https://" not in text and "src=" not in text  # nothing fetched
    assert page._repr_html_() in text
    path = page.save(tmp_path / "attention.html")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_token_colouring_escapes_and_scales():
    page = viz.tokens_html(EVIL, [-1.0, 0.0, 0.5, 1.0, 2.0, -2.0], title="loss <per token>")
    text = page._repr_html_()
    assert "<script>" not in text and "<b>bold</b>" not in text
    assert html.escape(EVIL[0]) in text and "loss &lt;per token&gt;" in text
    assert "rgb(255,100,100)" in text  # the most negative value: full red on a signed scale
    seq = viz.tokens_html(["a", "b"], [0.0, 3.0])._repr_html_()
    assert "rgb(255,100,100)" not in seq and "rgb(65,125,255)" in seq  # sequential: white to blue


def test_bad_shapes():
    with pytest.raises(ShapeError, match="3 tokens"):
        viz.attention_html(np.ones((1, 4, 4)), ["a", "b", "c"])
    with pytest.raises(ShapeError, match=r"\[head, query, key\]"):
        viz.attention_html(np.ones((4, 4)), list("abcd"))
    with pytest.raises(ShapeError, match="labels"):
        viz.attention_html(np.ones((2, 2, 2)), ["a", "b"], labels=["x"])
