// superpos feature browser: static pages, data loaded as <script> files so that file:// works.
var SP = {meta: null, vocab: null, index: null, chunks: {}, waiting: {}};

SP.chunk = function (c, lo, feats) {
  SP.chunks[c] = {lo: lo, feats: feats};
  (SP.waiting[c] || []).forEach(function (fn) { fn(); });
  delete SP.waiting[c];
};

SP.el = function (tag, attrs, text) {
  var e = document.createElement(tag);
  for (var k in (attrs || {})) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
};

SP.tokText = function (i) {  // a token as it reads, with newlines and tabs made visible
  var s = SP.vocab[i];
  return s === undefined ? "<" + i + ">" : s.replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192");
};

SP.fmt = function (x, digits) {  // 3 significant digits, without exponents for everyday sizes
  var v = Number(Number(x).toPrecision(digits || 3));
  return Math.abs(v) >= 1e6 || (v !== 0 && Math.abs(v) < 1e-4) ? v.toExponential(2) : String(v);
};

SP.header = function () {
  var m = SP.meta;
  document.getElementById("title").textContent = m.title;
  document.getElementById("subtitle").textContent = m.n_features + " features of " + m.dictionary + ", read over " +
    m.rows_scanned + " tokens of " + m.store + (m.corpus ? " (" + m.corpus + ")" : "") + ".";
};

// ------------------------------------------------------------------ index
SP.renderIndex = function () {
  SP.header();
  var ix = SP.index, n = SP.meta.n_features, per = 100;
  var state = {key: "freq", dir: -1, page: 0, ids: null};
  var all = []; for (var i = 0; i < n; i++) all.push(i);
  var body = document.querySelector("#features tbody");
  var heads = document.querySelectorAll("th[data-key]");

  function value(key, i) { return key === "id" ? i : ix[key][i]; }
  function sort() {
    var key = state.key, dir = state.dir;
    state.ids.sort(function (a, b) { return dir * (value(key, a) - value(key, b)) || a - b; });
    heads.forEach(function (h) {
      h.classList.remove("sorted-asc", "sorted-desc");
      if (h.dataset.key === key) h.classList.add(dir > 0 ? "sorted-asc" : "sorted-desc");
    });
  }
  function tokens(td, ids) { ids.forEach(function (t) { td.appendChild(SP.el("span", {"class": "tk"}, SP.tokText(t))); }); }
  function render() {
    var pages = Math.max(1, Math.ceil(state.ids.length / per));
    state.page = Math.min(state.page, pages - 1);
    body.textContent = "";
    state.ids.slice(state.page * per, (state.page + 1) * per).forEach(function (i) {
      var tr = SP.el("tr", {"data-feature": i});
      var td = SP.el("td", {"class": "num"});
      td.appendChild(SP.el("a", {href: "feature.html#" + i}, String(i)));
      tr.appendChild(td);
      tr.appendChild(SP.el("td", {"class": "num"}, (100 * ix.freq[i]).toFixed(3) + "%"));
      tr.appendChild(SP.el("td", {"class": "num"}, SP.fmt(ix.max[i])));
      tr.appendChild(SP.el("td", {"class": "num"}, ix.maxcos[i].toFixed(3)));
      var a = SP.el("td"); tokens(a, ix.top_tok[i]); tr.appendChild(a);
      var b = SP.el("td"); tokens(b, ix.promo[i]); tr.appendChild(b);
      body.appendChild(tr);
    });
    document.getElementById("page").textContent = "page " + (state.page + 1) + " of " + pages;
    document.getElementById("count").textContent = state.ids.length + " features";
  }
  function filter(q) {
    q = q.toLowerCase();
    if (!q.trim()) { state.ids = all.slice(); return; }
    var hit = new Uint8Array(SP.vocab.length), exact = q.trim();
    for (var t = 0; t < SP.vocab.length; t++) {
      var s = SP.vocab[t].toLowerCase();
      if (s.indexOf(q) >= 0 || s.trim() === exact) hit[t] = 1;
    }
    state.ids = all.filter(function (i) {
      return ix.top_tok[i].some(function (t) { return hit[t]; }) || ix.promo[i].some(function (t) { return hit[t]; });
    });
  }
  heads.forEach(function (h) {
    h.addEventListener("click", function () {
      if (state.key === h.dataset.key) state.dir = -state.dir;
      else { state.key = h.dataset.key; state.dir = h.dataset.key === "id" ? 1 : -1; }
      state.page = 0; sort(); render();
    });
  });
  var timer = null;
  document.getElementById("search").addEventListener("input", function (e) {
    clearTimeout(timer);
    timer = setTimeout(function () { filter(e.target.value); state.page = 0; sort(); render(); }, 150);
  });
  document.getElementById("prev").addEventListener("click", function () { state.page = Math.max(0, state.page - 1); render(); });
  document.getElementById("next").addEventListener("click", function () { state.page += 1; render(); });
  state.ids = all.slice(); sort(); render();
};

// ------------------------------------------------------------------ feature page
SP.withChunk = function (c, fn) {
  if (SP.chunks[c]) return fn();
  var first = !SP.waiting[c];
  (SP.waiting[c] = SP.waiting[c] || []).push(fn);
  if (first) document.head.appendChild(SP.el("script", {src: "data/f/" + c + ".js"}));
};

SP.histogram = function (hist, vmax) {
  var w = 360, h = 90, pad = 16, top = Math.max.apply(null, hist) || 1, bw = w / hist.length;
  var ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "hist"); svg.setAttribute("width", w); svg.setAttribute("height", h + pad);
  hist.forEach(function (c, j) {
    var r = document.createElementNS(ns, "rect"), bh = Math.max(c ? 1 : 0, (h * Math.sqrt(c / top)));
    r.setAttribute("x", j * bw + 1); r.setAttribute("width", bw - 2); r.setAttribute("y", h - bh); r.setAttribute("height", bh);
    var t = document.createElementNS(ns, "title"); t.textContent = c + " tokens"; r.appendChild(t);
    svg.appendChild(r);
  });
  [[0, "0", "start"], [w, SP.fmt(vmax), "end"]].forEach(function (p) {
    var t = document.createElementNS(ns, "text");
    t.setAttribute("x", p[0]); t.setAttribute("y", h + 12); t.setAttribute("text-anchor", p[2]); t.textContent = p[1];
    svg.appendChild(t);
  });
  return svg;
};

SP.tokenList = function (title, ids, vals, link) {
  var div = SP.el("div"); div.appendChild(SP.el("h2", {}, title));
  var ol = SP.el("ol");
  ids.forEach(function (t, j) {
    var li = SP.el("li");
    li.appendChild(link ? SP.el("a", {href: "feature.html#" + t}, "feature " + t) : SP.el("span", {"class": "tk"}, SP.tokText(t)));
    li.appendChild(SP.el("span", {"class": "v"}, SP.fmt(vals[j])));
    ol.appendChild(li);
  });
  div.appendChild(ol);
  return div;
};

SP.renderFeature = function () {
  SP.header();
  function show() {
    var n = SP.meta.n_features, f = parseInt(location.hash.slice(1), 10);
    if (!(f >= 0 && f < n)) f = 0;
    var c = Math.floor(f / SP.meta.chunk);
    SP.withChunk(c, function () {
      var d = SP.chunks[c].feats[f - SP.chunks[c].lo], main = document.getElementById("feature");
      document.title = "superpos · feature " + f;
      document.getElementById("prevf").href = "feature.html#" + Math.max(0, f - 1);
      document.getElementById("nextf").href = "feature.html#" + Math.min(n - 1, f + 1);
      main.textContent = "";
      main.appendChild(SP.el("h1", {}, "Feature " + f));
      main.appendChild(SP.el("p", {"class": "stats"}, "fires on " + (100 * d.freq).toFixed(3) + "% of tokens · max activation " +
        SP.fmt(d.max) + " · mean when firing " + SP.fmt(d.mean)));
      main.appendChild(SP.el("h2", {}, "Activation histogram (non-zero activations, square-root scale)"));
      main.appendChild(SP.histogram(d.hist, d.max));
      main.appendChild(SP.el("h2", {}, "Top-activating contexts"));
      var box = SP.el("div", {id: "contexts"});
      d.ctx.forEach(function (ctx) {
        var row = SP.el("div", {"class": "ctx"});
        row.appendChild(SP.el("span", {"class": "val"}, SP.fmt(ctx.v)));
        var text = SP.el("span");
        ctx.t.forEach(function (t, j) {
          if (t < 0) return;
          var a = ctx.a[j], s = SP.el("span", {"class": "tok" + (j === SP.meta.before ? " centre" : ""),
            title: "activation " + SP.fmt(a * d.max / 100) + " (" + a + "% of max)"}, SP.tokText(t));
          if (a > 0) s.style.backgroundColor = "rgba(255,110,0," + (0.12 + 0.88 * a / 100).toFixed(3) + ")";
          text.appendChild(s);
        });
        row.appendChild(text);
        box.appendChild(row);
      });
      if (!d.ctx.length) box.appendChild(SP.el("p", {}, "This feature never fired on the scanned tokens."));
      main.appendChild(box);
      var cols = SP.el("div", {"class": "cols"});
      cols.appendChild(SP.tokenList("Promotes (logit effect)", d.up[0], d.up[1]));
      cols.appendChild(SP.tokenList("Suppresses", d.down[0], d.down[1]));
      cols.appendChild(SP.tokenList("Nearest atoms (cos)", d.atoms[0], d.atoms[1], true));
      cols.appendChild(SP.tokenList("Nearest token embeddings (cos)", d.tokens[0], d.tokens[1]));
      main.appendChild(cols);
    });
  }
  window.addEventListener("hashchange", show);
  show();
};
