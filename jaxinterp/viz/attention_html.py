"""Self-contained HTML views: attention patterns per head, and tokens coloured by a value.

Each function returns an :class:`HTML` object: a notebook shows it inline (``_repr_html_``),
``.save(path)`` writes a standalone page that works from disk (``file://``). Nothing is
fetched from the network: the styles and the few lines of JavaScript are inline.

Every piece of text (tokens, head labels, titles) is escaped: markup text through
``html.escape``; the data handed to the script is JSON inside a
``<script type="application/json">`` block with ``<``, ``>`` and ``&`` written as
``\\u003c``, ``\\u003e``, ``\\u0026`` (so a token ``</script>`` cannot end the block), and
the script writes tokens with ``textContent``, never as markup.

    page = attention_html(cache.stacked("blocks.*.attn.hook_pattern")[:, 0], token_strings)
    page.save("runs/attention.html")      # or just `page` as the last line of a notebook cell
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.errors import ShapeError


class HTML:
    """An HTML fragment that notebooks render and ``save`` writes as a whole page."""

    def __init__(self, body: str, title: str = "jaxinterp"):
        self.body, self.title = body, title

    def _repr_html_(self) -> str:
        return self.body

    def __str__(self) -> str:
        return self.page()

    def page(self) -> str:
        """A complete standalone document."""
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title></head>\n<body>\n{self.body}\n</body></html>\n")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.page(), encoding="utf-8")
        return path


def script_json(data: Any) -> str:
    """JSON that is safe inside ``<script>``: ``<``, ``>``, ``&`` and line separators escaped."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def show_token(token: str) -> str:
    """A token as displayed: newlines and tabs made visible (still to be escaped)."""
    return str(token).replace("\n", "\u21b5").replace("\t", "\u2192")


def _colour(value: float, vmax: float, signed: bool) -> str:
    """Blue for positive (or any value on a sequential scale), red for negative."""
    x = 0.0 if vmax <= 0 or not np.isfinite(value) else min(abs(value) / vmax, 1.0)
    if signed and value < 0:
        return f"rgb(255,{int(255 - 155 * x)},{int(255 - 155 * x)})"
    return f"rgb({int(255 - 190 * x)},{int(255 - 130 * x)},255)"


_STYLE = """<style>
.ji-viz{font-family:system-ui,sans-serif;font-size:13px;color:#222;max-width:1100px}
.ji-viz h3{font-size:15px;margin:4px 0 8px}
.ji-tok{white-space:pre;font-family:ui-monospace,monospace;padding:1px 0;margin:0 1px 0 0;border-radius:2px;
 cursor:default;display:inline-block;line-height:1.6}
.ji-tok.ji-q{outline:2px solid #e65100}
.ji-heads{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0}
.ji-head{text-align:center;cursor:pointer;border:2px solid transparent;padding:2px}
.ji-head.ji-on{border-color:#e65100}
.ji-head canvas{image-rendering:pixelated;border:1px solid #ccc;display:block}
.ji-legend{display:inline-block;width:160px;height:10px;vertical-align:middle;margin:0 6px;border:1px solid #ccc}
.ji-info{color:#555;min-height:1.4em;font-family:ui-monospace,monospace}
</style>"""


def _token_list(tokens: Sequence[Any], n: int, what: str) -> list[str]:
    tokens = [str(t) for t in tokens]
    if len(tokens) != n:
        raise ShapeError(f"{len(tokens)} tokens for {what} of length {n}")
    return tokens


def tokens_html(tokens: Sequence[Any], values: Any, *, title: str | None = None,
                signed: bool | None = None, label: str = "value") -> HTML:
    """Tokens coloured by one value each (a loss, an attribution, a feature's activation).

    ``signed=None`` uses a diverging scale (red negative, blue positive) when any value is
    negative, else a sequential one. Hovering a token shows its value.
    """
    vals = np.asarray(values, np.float64).reshape(-1)
    tokens = _token_list(tokens, len(vals), "values")
    finite = vals[np.isfinite(vals)]
    signed = bool(finite.size and finite.min() < 0) if signed is None else signed
    vmax = float(np.abs(finite).max()) if finite.size else 0.0
    spans = "".join(
        f'<span class="ji-tok" style="background:{_colour(v, vmax, signed)}" '
        f'title="{html.escape(repr(t))}: {html.escape(label)} {v:.4g}">{html.escape(show_token(t))}</span>'
        for t, v in zip(tokens, vals, strict=True))
    low = f"{-vmax:.3g}" if signed else "0"
    grad = "linear-gradient(90deg,rgb(255,100,100),white,rgb(65,125,255))" if signed else \
        "linear-gradient(90deg,white,rgb(65,125,255))"
    legend = (f'<div>{html.escape(label)}: {low}<span class="ji-legend" style="background:{grad}"></span>'
              f"{vmax:.3g}</div>")
    head = f"<h3>{html.escape(title)}</h3>" if title else ""
    return HTML(f'{_STYLE}<div class="ji-viz">{head}{legend}<div>{spans}</div></div>', title or "tokens")


_SCRIPT = """<script>(function(){
const root=document.getElementById(%(id)s);
const D=JSON.parse(document.getElementById(%(data)s).textContent);
const P=D.patterns, T=D.tokens, n=T.length, strip=root.querySelector('.ji-strip'),
 info=root.querySelector('.ji-info'), big=root.querySelector('.ji-big'), heads=root.querySelector('.ji-heads');
let head=0, query=-1;
function blue(a){const x=Math.max(0,Math.min(1,a));return 'rgb('+Math.round(255-190*x)+','+Math.round(255-130*x)+',255)';}
function draw(cv,m,px){cv.width=n*px;cv.height=n*px;const c=cv.getContext('2d');
 for(let q=0;q<n;q++)for(let k=0;k<=q&&k<n;k++){c.fillStyle=blue(m[q][k]);c.fillRect(k*px,q*px,px,px);}
 if(cv===big&&query>=0){c.strokeStyle='#e65100';c.lineWidth=2;c.strokeRect(0,query*px,n*px,px);}}
const spans=T.map(function(t,i){const s=document.createElement('span');s.className='ji-tok';s.textContent=t;
 s.addEventListener('mouseenter',function(){query=i;paint();});strip.appendChild(s);return s;});
strip.addEventListener('mouseleave',function(){query=-1;paint();});
D.labels.forEach(function(lab,h){const d=document.createElement('div');d.className='ji-head';
 const cv=document.createElement('canvas');draw(cv,P[h],Math.max(1,Math.floor(64/n)));
 const l=document.createElement('div');l.textContent=lab;d.appendChild(cv);d.appendChild(l);
 d.addEventListener('click',function(){head=h;paint();});heads.appendChild(d);});
const px=Math.max(2,Math.floor(360/n));
big.addEventListener('mousemove',function(e){const r=big.getBoundingClientRect();
 const k=Math.floor((e.clientX-r.left)/px), q=Math.floor((e.clientY-r.top)/px);
 if(q>=0&&q<n&&k>=0&&k<n)info.textContent=D.labels[head]+': '+JSON.stringify(T[q])+' -> '+JSON.stringify(T[k])+
  ' = '+P[head][q][k].toFixed(3);});
function paint(){Array.prototype.forEach.call(heads.children,function(d,h){d.className='ji-head'+(h===head?' ji-on':'');});
 spans.forEach(function(s,k){s.className='ji-tok'+(k===query?' ji-q':'');
  s.style.background=query<0?'':blue(k<=query?P[head][query][k]:0);});
 draw(big,P[head],px);
 if(query>=0)info.textContent=D.labels[head]+': attention from '+JSON.stringify(T[query]);}
paint();})();</script>"""


def attention_html(patterns: Any, tokens: Sequence[Any], *, labels: Sequence[str] | None = None,
                   title: str | None = None, decimals: int = 3) -> HTML:
    """Attention patterns of several heads over one prompt, explorable in the browser.

    Args:
      patterns: ``[head, query, key]`` or ``[layer, head, query, key]`` (e.g.
        ``cache.stacked("blocks.*.attn.hook_pattern")[:, 0]`` for the first prompt).
      tokens: the prompt's tokens as strings (``query`` of them).
      labels: one name per head (default ``L{layer}H{head}``).
      title: a heading.
      decimals: rounding of the embedded numbers (keeps pages small).

    Returns:
      :class:`HTML`: thumbnails of every head (click one to select it), the selected
      head's pattern (hover a cell for its query, key and weight), and the tokens: hovering
      one colours every earlier token by the attention it receives from it.
    """
    arr = np.asarray(patterns, np.float64)
    if arr.ndim == 4:
        default = [f"L{layer}H{h}" for layer in range(arr.shape[0]) for h in range(arr.shape[1])]
        arr = arr.reshape((-1,) + arr.shape[2:])
    elif arr.ndim == 3:
        default = [f"H{h}" for h in range(arr.shape[0])]
    else:
        raise ShapeError(f"patterns must be [head, query, key] or [layer, head, query, key], got {arr.shape}")
    if arr.shape[1] != arr.shape[2]:
        raise ShapeError(f"patterns must be square over query and key positions, got {arr.shape}")
    tokens = [show_token(t) for t in _token_list(tokens, arr.shape[1], "patterns")]
    labels = default if labels is None else [str(x) for x in labels]
    if len(labels) != arr.shape[0]:
        raise ShapeError(f"{len(labels)} labels for {arr.shape[0]} heads")
    arr = np.nan_to_num(arr.round(decimals), nan=0.0)
    uid = "ji-" + uuid.uuid4().hex[:12]
    data = {"tokens": tokens, "labels": labels, "patterns": arr.tolist()}
    head = f"<h3>{html.escape(title)}</h3>" if title else ""
    body = (f'{_STYLE}<div class="ji-viz" id="{uid}">{head}'
            '<div>Click a head; hover the tokens or the pattern (query rows, key columns).</div>'
            '<div class="ji-heads"></div><canvas class="ji-big"></canvas>'
            '<div class="ji-info"></div><div class="ji-strip"></div>'
            f'<script type="application/json" id="{uid}-data">{script_json(data)}</script>'
            + _SCRIPT % {"id": json.dumps(uid), "data": json.dumps(uid + "-data")} + "</div>")
    return HTML(body, title or "attention patterns")
