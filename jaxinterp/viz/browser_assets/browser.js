/* jaxinterp feature browser.
 *
 * Works from file:// with no network: data arrive as script files that call JI.index,
 * JI.vocab, JI.chunk and JI.passages (a page opened from disk cannot fetch() local
 * files, but it can add <script src> elements). Feature data are split into chunks of
 * features, loaded only when a feature is opened, so the index stays fast with many
 * thousands of features. Every piece of dataset text is inserted with textContent or
 * as an attribute value, never parsed as HTML.
 */
(function () {
  "use strict";
  var JI = window.JI = window.JI || {};
  var state = {chunks: {}, waiting: {}, loading: {}, shown: 100, order: null};

  JI.index = function (d) { state.index = d; };
  JI.vocab = function (v) { state.vocab = v; done("vocab"); };
  JI.passages = function (p) { state.passages = p; done("passages"); };
  JI.chunk = function (c, feats) { state.chunks[c] = feats; done("chunk" + c); };

  function done(key) {
    var list = state.waiting[key] || [];
    delete state.waiting[key];
    list.forEach(function (f) { f(); });
  }

  function need(key, src, ready, cb) {
    if (ready()) { cb(); return; }
    (state.waiting[key] = state.waiting[key] || []).push(cb);
    if (state.loading[key]) return;
    state.loading[key] = true;
    var s = document.createElement("script");
    s.src = src;
    s.onerror = function () { status("could not load " + src); };
    document.head.appendChild(s);
  }

  function needVocab(cb) { need("vocab", "data/vocab.js", function () { return !!state.vocab; }, cb); }

  function needFeature(i, cb) {
    var c = Math.floor(i / state.index.chunk);
    var name = "data/features_" + ("0000" + c).slice(-5) + ".js";
    needVocab(function () {
      need("chunk" + c, name, function () { return !!state.chunks[c]; }, function () { cb(state.chunks[c][i - c * state.index.chunk]); });
    });
  }

  // DOM helpers: text only, never innerHTML --------------------------------------------
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    attrs = attrs || {};
    Object.keys(attrs).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "cls") e.className = attrs[k];
      else if (k === "style") e.style.cssText = attrs[k];
      else e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function status(msg) { var s = document.getElementById("status"); if (s) s.textContent = msg; }
  function fmt(x, d) { return x === 0 ? "0" : (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e4 ? x.toExponential(d || 2) : x.toFixed(d || 3)); }
  function sig(x) { return x === 0 ? "0" : (Math.abs(x) < 1e-3 ? x.toExponential(2) : x.toPrecision(3)); }
  function show(tok) { return String(tok).replace(/\n/g, "\u23ce").replace(/\t/g, "\u21e5"); }
  function tokenText(id) { var t = state.vocab[id]; return t === undefined ? "<" + id + ">" : t; }
  function featureLink(j, extra) {
    var a = el("a", {href: "#f=" + Number(j), text: "#" + Number(j)});
    var label = state.index.label[j];
    a.setAttribute("title", label === undefined ? "" : label);
    return extra ? el("span", {}, [a, " " + extra]) : a;
  }

  // Index: search and sort ------------------------------------------------------------
  function matches(q) {
    var d = state.index, n = d.density.length, out = [], exact = [];
    q = q.trim();
    if (!q) { for (var i = 0; i < n; i++) out.push(i); return out; }
    var num = /^#?(\d+)$/.exec(q);
    if (num && +num[1] < n) exact.push(+num[1]);
    var lower = q.toLowerCase();
    for (var j = 0; j < n; j++) {
      var toks = d.tokens[j], hit = false, best = false;
      for (var t = 0; t < toks.length; t++) {
        var tl = toks[t].toLowerCase();
        if (tl.trim() === lower || tl === lower) { best = true; break; }
        if (tl.indexOf(lower) >= 0) hit = true;
      }
      if (best) exact.push(j);
      else if (hit || d.label[j].toLowerCase().indexOf(lower) >= 0) out.push(j);
    }
    return exact.concat(out);
  }

  function sorted(list, key) {
    var d = state.index;
    var cmp = {
      density: function (a, b) { return d.density[b] - d.density[a] || a - b; },
      max: function (a, b) { return d.max[b] - d.max[a] || a - b; },
      name: function (a, b) { return d.label[a] < d.label[b] ? -1 : d.label[a] > d.label[b] ? 1 : a - b; },
      index: function (a, b) { return a - b; }
    }[key];
    return key === "relevance" ? list : list.slice().sort(cmp);
  }

  function renderIndex() {
    var d = state.index;
    var q = document.getElementById("search").value;
    var key = document.getElementById("sort").value;
    if (q.trim() && key === "index") key = "relevance";
    var list = sorted(matches(q), key);
    state.order = list;
    var body = clear(document.getElementById("rows"));
    var maxDensity = 0;
    for (var i = 0; i < d.density.length; i++) maxDensity = Math.max(maxDensity, d.density[i]);
    var frag = document.createDocumentFragment();
    list.slice(0, state.shown).forEach(function (j) {
      var w = d.density[j] > 0 ? Math.max(1, 80 * (Math.log10(d.density[j]) + 6) / (Math.log10(maxDensity || 1) + 6)) : 0;
      frag.appendChild(el("tr", {"data-feature": j}, [
        el("td", {}, [featureLink(j)]),
        el("td", {text: d.label[j]}),
        el("td", {cls: "num"}, [el("span", {cls: "bar", style: "width:" + w.toFixed(0) + "px"}), sig(d.density[j])]),
        el("td", {cls: "num", text: fmt(d.max[j], 3)})
      ]));
    });
    body.appendChild(frag);
    document.getElementById("count").textContent = list.length + " of " + d.density.length + " features" +
      (list.length > state.shown ? " (showing " + state.shown + ")" : "");
    document.getElementById("more").style.display = list.length > state.shown ? "" : "none";
  }

  // Panels ------------------------------------------------------------------------------
  function histogram(counts, lo, hi, cls, label) {
    var W = 420, H = 110, n = counts.length, top = Math.max.apply(null, counts.concat([1]));
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "hist " + (cls || ""));
    svg.setAttribute("width", W); svg.setAttribute("height", H + 16);
    for (var b = 0; b < n; b++) {
      var r = document.createElementNS(ns, "rect"), h = (H - 2) * counts[b] / top;
      r.setAttribute("x", (b * W / n).toFixed(1)); r.setAttribute("width", Math.max(W / n - 1, 1).toFixed(1));
      r.setAttribute("y", (H - h).toFixed(1)); r.setAttribute("height", h.toFixed(1));
      var t = document.createElementNS(ns, "title");
      t.textContent = "[" + fmt(lo + (hi - lo) * b / n) + ", " + fmt(lo + (hi - lo) * (b + 1) / n) + "): " + counts[b];
      r.appendChild(t); svg.appendChild(r);
    }
    [[0, fmt(lo)], [W - 40, fmt(hi)]].forEach(function (p) {
      var t = document.createElementNS(ns, "text");
      t.setAttribute("x", p[0]); t.setAttribute("y", H + 12); t.textContent = p[1]; svg.appendChild(t);
    });
    return el("div", {}, [el("div", {cls: "muted", text: label}), svg]);
  }

  function context(c, scale) {
    // c = [value, seq, start, tokens, acts, offset of the token the context is about]
    var line = el("div", {cls: "ctx"}, [el("span", {cls: "v", text: fmt(c[0], 2)})]);
    var peak = c[5];
    c[3].forEach(function (tok, k) {
      var a = c[4][k], alpha = scale > 0 ? Math.min(1, Math.max(0, a / scale)) : 0;
      var span = el("span", {cls: "tok" + (k === peak && a > 0 ? " peak" : ""), text: show(tokenText(tok))});
      if (a > 0) span.style.backgroundColor = "rgba(240, 120, 0, " + (0.12 + 0.88 * alpha).toFixed(3) + ")";
      span.setAttribute("title", "activation " + fmt(a, 3) + " (sequence " + c[1] + ", position " + (c[2] + k) + ")");
      line.appendChild(span);
    });
    return line;
  }

  function tokenTable(rows, cls) {
    var t = el("table", {cls: "tokens-table"});
    rows.forEach(function (r) { t.appendChild(el("tr", {}, [el("td", {text: show(tokenText(r[0]))}), el("td", {cls: cls, text: fmt(r[1], 3)})])); });
    return t;
  }

  function renderFeature(i, f) {
    var d = state.index, root = clear(document.getElementById("view"));
    document.title = "feature " + i + " | " + d.title;
    root.appendChild(el("div", {cls: "links"}, [
      el("a", {href: "#", text: "\u2190 index"}),
      i > 0 ? el("a", {href: "#f=" + (i - 1), text: "\u2039 #" + (i - 1)}) : null,
      i + 1 < d.density.length ? el("a", {href: "#f=" + (i + 1), text: "#" + (i + 1) + " \u203a"}) : null]));
    root.appendChild(el("h2", {id: "feature-title", text: "Feature " + i}));
    root.appendChild(el("div", {cls: "muted", text: d.label[i]}));
    root.appendChild(el("p", {text: "density " + sig(f.density) + " \u00b7 mean activation " + fmt(f.mean, 3) +
      " \u00b7 max activation " + fmt(f.max, 3) + " \u00b7 site " + d.site}));
    var grid = el("div", {cls: "grid"});
    var nb = Math.max(1, Math.ceil(f.hist.length * Math.min(1, f.max / f.range) + 1e-9));
    grid.appendChild(el("div", {cls: "panel"}, [el("h2", {text: "Activations"}),
      histogram(f.hist.slice(0, nb), 0, f.range * nb / f.hist.length, "", "non-zero activations (count per bin)")]));
    if (f.pos) {
      grid.appendChild(el("div", {cls: "panel"}, [el("h2", {text: "Logit effects (W_dec \u00b7 W_U)"}),
        el("div", {cls: "grid"}, [el("div", {}, [el("div", {cls: "muted", text: "promoted"}), tokenTable(f.pos, "pos")]),
                                  el("div", {}, [el("div", {cls: "muted", text: "suppressed"}), tokenTable(f.neg, "neg")])]),
        histogram(f.lhist, f.llo, f.lhi, "logit", "effect on every token's logit")]));
    }
    root.appendChild(grid);
    var rel = el("div", {cls: "panel links", id: "neighbours"}, [el("h2", {text: "Nearest features (decoder cosine)"})]);
    (f.nn || []).forEach(function (p) { rel.appendChild(featureLink(p[0], fmt(p[1], 2))); });
    root.appendChild(rel);
    var co = el("div", {cls: "panel links", id: "cooccurring"}, [el("h2", {text: "Co-occurring features (Jaccard)"})]);
    (f.co || []).forEach(function (p) { co.appendChild(featureLink(p[0], fmt(p[1], 2))); });
    root.appendChild(co);
    var top = el("div", {cls: "panel", id: "top-contexts"}, [el("h2", {text: "Top activating contexts"})]);
    f.top.forEach(function (c) { top.appendChild(context(c, f.max)); });
    if (!f.top.length) top.appendChild(el("div", {cls: "muted", text: "never active on these tokens"}));
    root.appendChild(top);
    var iv = el("div", {cls: "panel", id: "intervals"}, [el("h2", {text: "Samples by activation interval"})]);
    f.intervals.slice().reverse().forEach(function (g) {
      iv.appendChild(el("div", {cls: "muted", text: "interval [" + fmt(g[0], 2) + ", " + fmt(g[1], 2) + "): " +
        (100 * g[2]).toFixed(1) + "% of activations"}));
      g[3].forEach(function (c) { iv.appendChild(context(c, f.max)); });
    });
    root.appendChild(iv);
    window.scrollTo(0, 0);
  }

  // The text box: which features fire on text from the corpus --------------------------
  function renderPassage(p) {
    var box = clear(document.getElementById("passage")), list = clear(document.getElementById("token-features"));
    var strongest = 0;
    p.top.forEach(function (t) { if (t.length) strongest = Math.max(strongest, t[0][1]); });
    p.tokens.forEach(function (tok, k) {
      var feats = p.top[k], a = feats.length ? feats[0][1] : 0;
      var span = el("span", {cls: "tok", text: show(tokenText(tok))});
      if (a > 0) span.style.backgroundColor = "rgba(240, 120, 0, " + (0.1 + 0.9 * a / (strongest || 1)).toFixed(3) + ")";
      span.setAttribute("title", feats.map(function (x) { return "#" + x[0] + " " + fmt(x[1], 2); }).join(", ") || "no feature");
      span.addEventListener("click", function () {
        clear(list);
        list.appendChild(el("span", {cls: "muted", text: "features on " + JSON.stringify(tokenText(tok)) + ": "}));
        feats.forEach(function (x) { list.appendChild(featureLink(x[0], fmt(x[1], 2))); });
      });
      box.appendChild(span);
    });
  }

  function findPassage(q, random) {
    need("passages", "data/passages.js", function () { return !!state.passages; }, function () {
      needVocab(function () {
        var ps = state.passages, hit = -1;
        if (random) hit = Math.floor(Math.random() * ps.length);
        else {
          q = q.toLowerCase();
          for (var i = 0; i < ps.length && hit < 0; i++) {
            var text = ps[i].tokens.map(tokenText).join("").toLowerCase();
            if (text.indexOf(q) >= 0) hit = i;
          }
        }
        if (hit < 0) { status("no corpus passage contains that text"); return; }
        status("passage " + hit + " of " + ps.length);
        renderPassage(ps[hit]);
      });
    });
  }

  // Routing ---------------------------------------------------------------------------
  function route() {
    var m = /^#f=(-?\d+)$/.exec(location.hash);
    var indexView = document.getElementById("index-view"), view = document.getElementById("view");
    if (!m) {
      indexView.style.display = ""; clear(view); document.title = state.index.title;
      return;
    }
    var i = +m[1], n = state.index.density.length;
    indexView.style.display = "none";
    if (i < 0 || i >= n) { clear(view).appendChild(el("p", {text: "feature " + i + " is out of range (0.." + (n - 1) + ")"})); return; }
    clear(view).appendChild(el("p", {cls: "muted", text: "loading feature " + i + "\u2026"}));
    needFeature(i, function (f) { renderFeature(i, f); });
  }

  function start() {
    var d = state.index;
    document.getElementById("title").textContent = d.title;
    document.getElementById("summary").textContent = d.density.length + " features \u00b7 " + d.alive + " alive \u00b7 " +
      d.n_tokens + " tokens \u00b7 " + d.site;
    var search = document.getElementById("search"), timer = null;
    search.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(function () { state.shown = 100; renderIndex(); }, 120); });
    document.getElementById("sort").addEventListener("change", function () { state.shown = 100; renderIndex(); });
    document.getElementById("more").addEventListener("click", function () { state.shown += 200; renderIndex(); });
    document.getElementById("passage-go").addEventListener("click", function () { findPassage(document.getElementById("passage-text").value, false); });
    document.getElementById("passage-random").addEventListener("click", function () { findPassage("", true); });
    document.getElementById("passage-text").addEventListener("keydown", function (e) { if (e.key === "Enter") findPassage(e.target.value, false); });
    window.addEventListener("hashchange", route);
    renderIndex();
    route();
    JI.ready = performance.now();
    document.body.setAttribute("data-ready", "1");
    if (d.passages) setTimeout(function () { if (!state.passages) findPassage("", true); }, 50);  // an example
    else document.getElementById("passage-text").parentNode.parentNode.style.display = "none";
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
