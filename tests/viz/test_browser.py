"""The feature browser in headless Chromium (Debian's chromium driven by Playwright).

The page is opened from disk (file://) with no network. Checked: the index renders, search
finds a feature by a token it fires on, clicking a neighbour opens that feature, contexts
are coloured by activation, and corpus text holding ``<script>``, ``<img src=x
onerror=...>`` and ``"</script>`` shows as text and runs nothing. The index's load time
with 16,384 features is printed (measured, not asserted).
"""

import json
import re

import equinox as eqx
import jax
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.data import ByteTokenizer
from jaxinterp.features.analysis import AnalysisSettings, analyze_features
from jaxinterp.features.neuronpedia import export_neuronpedia
from jaxinterp.features.result import FeatureAnalysis
from jaxinterp.features.search import passage_features, peak_tokens
from jaxinterp.sae import SAEConfig, init_sae
from jaxinterp.viz import browser_shots
from jaxinterp.viz.browser import script_json, write_browser

NASTY = ('A corpus page: <script>window.__pwned = 1</script> and <img src=x onerror="window.__pwned = 2"> '
         'then "</script><script>window.__pwned = 3</script> end. ')
REASON = browser_shots.unavailable()
needs_browser = pytest.mark.skipif(REASON is not None, reason=f"no headless browser: {REASON}")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tok = ByteTokenizer()
    seq = 192
    filler = "The quick brown fox jumps over the lazy dog. Some more text follows here. " * 4
    rows = [(NASTY + f"row {i}: " + filler[i:])[:seq] for i in range(16)]
    tokens = np.asarray([tok.encode(r) for r in rows], np.int32)   # every row holds the whole NASTY text
    model = ji.init_transformer(ji.gpt2_config(d_model=32, n_layers=1, n_heads=2, d_vocab=256, n_ctx=seq),
                                jax.random.key(0))
    sae = init_sae(SAEConfig(d_in=32, d_sae=48, architecture="topk", k=4, hook_name="blocks.0.hook_resid_post"),
                   jax.random.key(1))
    sae = eqx.tree_at(lambda s: s.W_enc, sae, jax.random.normal(jax.random.key(2), (32, 48)))
    analysis = analyze_features(model, sae, tokens, batch_size=8, settings=AnalysisSettings(k=6, ctx=24, before=12))
    names = [f"feature {i}" for i in range(48)]
    names[0] = '<img src=x onerror="window.__pwned = 4"> name'
    out = tmp_path_factory.mktemp("browser_run")
    decode = lambda i: tok.decode([int(i)])  # noqa: E731
    index = write_browser(analysis, out / "browser", decode, names=names,
                          passages=passage_features(model, sae, tokens[:8]), title='<script>x</script> "run"')
    return analysis, index, out, decode


def test_script_json_cannot_close_a_script():
    text = script_json({"a": '</script><img src=x onerror=alert(1)>&\u2028'})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text)["a"].startswith("</script>")


def test_neuronpedia_layout(site, tmp_path):
    analysis, _, _, decode = site
    folder = export_neuronpedia(analysis, tmp_path, decode, model_id="tiny", sae_set="test", layer=0)
    batch = json.loads((folder / "batch-0.json").read_text())
    assert set(batch) == {"model_id", "layer", "sae_set", "features"}
    f = batch["features"][0]
    i = f["feature_index"]
    assert f["frac_nonzero"] == pytest.approx(analysis.density[i])
    assert len(f["pos_str"]) == len(f["pos_values"]) == 10 and f["pos_values"] == sorted(f["pos_values"], reverse=True)
    assert sum(f["freq_hist_data_bar_heights"]) == analysis.hist_counts[i].sum()
    assert len(f["freq_hist_data_bar_values"]) == len(f["freq_hist_data_bar_heights"])
    top = [a for a in f["activations"] if a["bin_min"] == -1]
    assert top and top[0]["bin_max"] == pytest.approx(analysis.max_activation[i], abs=1e-3)
    assert max(top[0]["values"]) == pytest.approx(analysis.max_activation[i], abs=1e-3)
    bins = [a for a in f["activations"] if a["bin_min"] != -1]
    assert bins and all(0 < a["bin_contains"] <= 1 for a in bins)  # the sampled token lies in its interval
    assert all(any(a["bin_min"] - 1e-3 <= v <= a["bin_max"] + 1e-3 and v > 0 for v in a["values"]) for a in bins)
    assert len(top[0]["tokens"]) == len(top[0]["values"])


@needs_browser
def test_browser_in_chromium(site):
    analysis, index, out, decode = site
    peaks = peak_tokens(analysis)
    alive = [i for i in range(analysis.d_sae) if peaks[i, 0] >= 0 and decode(peaks[i, 0]).strip()]
    target = max(alive, key=lambda i: analysis.top["values"][i, 0])
    token = decode(peaks[target, 0])
    from playwright.sync_api import expect

    errors, dialogs = [], []
    # Waits go through Playwright's selector engine, never a JavaScript string: the page's
    # Content Security Policy forbids eval, and a polled wait_for_function predicate uses it.
    with browser_shots.headless_chromium() as browser:
        page, load_ms = browser_shots.open_page(browser, index)
        page.set_default_timeout(120_000)  # Playwright's 30 s is too short on a loaded 2-core machine
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        assert page.locator("#rows tr").count() == min(analysis.d_sae, 100)
        assert page.inner_text("#count").startswith(f"{analysis.d_sae} of {analysis.d_sae}")
        assert page.title() == '<script>x</script> "run"'                       # the title is text
        # The search re-renders the rows 120 ms after the last keystroke: wait for that render
        # (a query nothing matches, then the token) so the click cannot land on a replaced row.
        page.fill("#search", "no feature has this \u2400")
        expect(page.locator("#count")).to_have_text(re.compile(r"^0 of "), timeout=120_000)
        page.fill("#search", token)
        expect(page.locator("#count")).not_to_have_text(re.compile(r"^0 of "), timeout=120_000)
        page.wait_for_selector(f"#rows tr[data-feature='{target}']")
        page.click(f"#rows tr[data-feature='{target}'] a")
        page.wait_for_selector("#top-contexts")
        assert page.inner_text("#feature-title") == f"Feature {target}"
        colours = page.eval_on_selector_all("#top-contexts .tok", "es => es.map(e => e.style.backgroundColor)")
        assert any(c.startswith("rgba(240, 120, 0") for c in colours)
        hover = page.get_attribute("#top-contexts .tok.peak", "title")
        assert hover.startswith("activation ")
        neighbour = int(analysis.neighbours["index"][target, 0])
        page.click("#neighbours a")
        expect(page.locator("#feature-title")).to_have_text(f"Feature {neighbour}", timeout=120_000)
        # the corpus text with <script>, <img onerror> and "</script> is shown as text
        page.evaluate("location.hash = ''")
        page.fill("#passage-text", "<script>window.__pwned")
        page.click("#passage-go")
        page.wait_for_selector("#passage .tok")
        shown = page.inner_text("#passage")
        assert "<script>window.__pwned = 1</script>" in shown and '<img src=x onerror="window.__pwned = 2">' in shown
        assert '"</script><script>window.__pwned = 3</script>' in shown
        page.click("#passage .tok")
        assert page.locator("#token-features a").count() >= 1
        page.fill("#search", "onerror")
        page.wait_for_selector("#rows tr[data-feature='0']")
        assert '<img src=x onerror="window.__pwned = 4"> name' in page.inner_text("#rows")
        assert page.evaluate("window.__pwned") is None
        assert page.locator("img").count() == 0
        inline = page.eval_on_selector_all("script", "ss => ss.filter(s => !s.src).length")
        assert inline == 1                                     # only the page's own script
        assert not errors and not dialogs
    shots = browser_shots.screenshot_browser(index, out, target)
    for key in ("index_png", "feature_png"):
        with open(shots[key], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    print(f"\nbrowser index load (48 features): {load_ms:.0f} ms")


def _synthetic(d_sae: int, k: int = 2, ctx: int = 8, B: int = 2) -> FeatureAnalysis:
    rng = np.random.default_rng(0)
    density = rng.uniform(0, 0.05, d_sae)

    def group(*shape):
        return {"values": rng.uniform(0.1, 3, shape).astype(np.float32), "seq": rng.integers(0, 1000, shape).astype(np.int32),
                "start": np.zeros(shape, np.int32), "acts": rng.uniform(0, 3, (*shape, ctx)).astype(np.float32),
                "tokens": rng.integers(0, 200, (*shape, ctx)).astype(np.int32)}

    return FeatureAnalysis(
        d_sae=d_sae, site="blocks.0.hook_resid_post", n_tokens=10**6, n_sequences=8192, density=density,
        mean_activation=rng.uniform(0, 1, d_sae), max_activation=rng.uniform(1, 3, d_sae),
        hist_counts=rng.integers(0, 50, (d_sae, 8)), hist_range=np.full(d_sae, 4.0), top=group(d_sae, k),
        intervals=group(d_sae, B, 1), interval_counts=rng.integers(1, 50, (d_sae, B)),
        neighbours={"index": rng.integers(0, d_sae, (d_sae, 4)).astype(np.int32),
                    "cosine": rng.uniform(0, 1, (d_sae, 4)).astype(np.float32)})


@needs_browser
def test_index_load_time_with_16k_features(tmp_path):
    analysis = _synthetic(16384)
    index = write_browser(analysis, tmp_path / "browser", lambda i: f"t{i}", chunk=256)
    with browser_shots.headless_chromium() as browser:
        page, load_ms = browser_shots.open_page(browser, index)
        page.set_default_timeout(120_000)  # Playwright's 30 s is too short on a loaded 2-core machine
        assert page.locator("#rows tr").count() == 100
        page.select_option("#sort", "density")
        best = int(np.argmax(analysis.density))
        assert page.get_attribute("#rows tr:first-child", "data-feature") == str(best)
        page.evaluate("location.hash = '#f=16383'")
        page.wait_for_selector("#top-contexts")
    print(f"\nbrowser index load with 16384 features: {load_ms:.0f} ms (navigation start to rendered index)")
    (tmp_path / "load_ms.txt").write_text(f"{load_ms:.1f}\n")
