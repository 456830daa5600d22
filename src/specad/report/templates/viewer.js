{% raw %}
// specad's spectral viewer: the page's embedded cube (see report/viewer.py for its encoding)
// drawn in false colour under the anomaly map, and a pixel's spectrum against the normal
// envelope. No library, no request. What is plotted is in window.specadViewer.pixel.
(() => {
  "use strict";
  const D = JSON.parse(document.getElementById("viewer-data").textContent);
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const COLOURS = ["#D55E00", "#009E73", "#CC79A7", "#E69F00", "#0072B2", "#000000"];
  const h = D.rows.length, w = D.cols.length, C = D.bands.length;
  const api = (window.specadViewer = { ready: false, pixel: null, bands: null });
  const state = { bands: D.presets.rgb.slice(), pinned: null, traces: new Set() };
  let cube = null, map = null;

  async function inflate(b64) {
    const raw = atob(b64), bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  const value = (p, c) => D.cube.min[c] + cube[p * C + c] * D.cube.scale[c];
  // x of each band: nm where known, else its index; bands drawn in order of x
  const xs = D.nm || D.bands.map((_, i) => i);
  const order = xs.map((_, i) => i).sort((a, b) => xs[a] - xs[b]);

  function stretch(c) {
    const v = new Float32Array(h * w);
    for (let p = 0; p < h * w; p++) v[p] = value(p, c);
    const s = v.slice().sort();
    const lo = s[Math.floor(0.01 * (s.length - 1))], hi = s[Math.floor(0.99 * (s.length - 1))];
    return [v, lo, Math.max(hi - lo, 1e-12)];
  }

  function drawFalseColour() {
    const canvas = $("fc"), ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h);
    const chans = state.bands.map(stretch);
    for (let p = 0; p < h * w; p++) {
      for (let k = 0; k < 3; k++) {
        const [v, lo, range] = chans[k];
        img.data[4 * p + k] = Math.max(0, Math.min(255, ((v[p] - lo) / range) * 255));
      }
      img.data[4 * p + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    ["r", "g", "b"].forEach((k, i) => ($("band-" + k).value = String(state.bands[i])));
    api.bands = state.bands.slice();
  }

  function drawOverlay() {
    const canvas = $("ov"), ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h);
    const opacity = Number($("opacity").value), [lo, hi] = D.range;
    for (let p = 0; p < h * w; p++) {
      const t = Math.max(0, Math.min(1, (map[p] - lo) / Math.max(hi - lo, 1e-12)));
      const rgb = D.lut[Math.round(t * 255)];
      img.data.set([rgb[0], rgb[1], rgb[2], Math.round(255 * opacity * t)], 4 * p);
    }
    ctx.putImageData(img, 0, 0);
  }

  function el(parent, tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    parent.appendChild(node);
    return node;
  }

  const fmt = (v) => (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-2 && v !== 0) ? v.toExponential(2) : v.toPrecision(3));

  // One plot: ``series`` are {values, colour, dash, width} lines over the bands, ``band`` an
  // optional [low, high] filled range, ``stems`` values drawn as vertical lines from zero.
  function plot(svg, title, series, band, stems, guides) {
    svg.replaceChildren();
    const W = Number(svg.getAttribute("width")), H = Number(svg.getAttribute("height"));
    const m = { l: 58, r: 20, t: 20, b: 34 };
    const all = series.flatMap((s) => s.values).concat(band ? band.flat() : [], stems || [], guides || []);
    let y0 = Math.min(...all), y1 = Math.max(...all);
    if (!(y1 > y0)) { y0 -= 1; y1 += 1; }
    const pad = 0.05 * (y1 - y0); y0 -= pad; y1 += pad;
    const x0 = Math.min(...xs), x1 = Math.max(...xs) + (xs.length === 1 ? 1 : 0);
    const X = (x) => m.l + ((x - x0) / Math.max(x1 - x0, 1e-9)) * (W - m.l - m.r);
    const Y = (y) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
    el(svg, "rect", { x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b, fill: "none", stroke: "#bbb" });
    el(svg, "text", { x: m.l, y: 14, "font-size": 12 }, title);
    for (let k = 0; k <= 4; k++) {
      const y = y0 + ((y1 - y0) * k) / 4, x = x0 + ((x1 - x0) * k) / 4;
      el(svg, "text", { x: m.l - 4, y: Y(y) + 4, "font-size": 10, "text-anchor": "end" }, fmt(y));
      el(svg, "text", { x: X(x), y: H - m.b + 14, "font-size": 10, "text-anchor": "middle" }, D.nm ? x.toFixed(0) : String(Math.round(x)));
    }
    el(svg, "text", { x: (W + m.l) / 2, y: H - 4, "font-size": 11, "text-anchor": "middle" }, D.nm ? "wavelength (nm)" : "band");
    const path = (vals) => order.map((i, k) => (k ? "L" : "M") + X(xs[i]).toFixed(1) + "," + Y(vals[i]).toFixed(1)).join("");
    if (band) {
      const back = order.slice().reverse().map((i) => "L" + X(xs[i]).toFixed(1) + "," + Y(band[1][i]).toFixed(1)).join("");
      el(svg, "path", { d: path(band[0]) + back + "Z", fill: "#56B4E9", "fill-opacity": 0.3, stroke: "none" });
    }
    for (const g of guides || []) el(svg, "line", { x1: m.l, x2: W - m.r, y1: Y(g), y2: Y(g), stroke: "#999", "stroke-dasharray": g ? "3,3" : "" });
    if (stems) {
      order.forEach((i) => el(svg, "line", { x1: X(xs[i]), x2: X(xs[i]), y1: Y(0), y2: Y(stems[i]), stroke: "#222", "stroke-width": 2 }));
    }
    for (const s of series) {
      el(svg, "path", { d: path(s.values), fill: "none", stroke: s.colour, "stroke-width": s.width || 1.5, "stroke-dasharray": s.dash || "" });
    }
  }

  const zOf = (vals) => vals.map((v, c) => (v - D.envelope.median[c]) / D.envelope.spread[c]);

  function show(i, j) {
    const p = i * w + j;
    const spectrum = D.bands.map((_, c) => value(p, c));
    const z = D.envelope ? zOf(spectrum) : null;
    const picked = D.traces.filter((_, k) => state.traces.has(k));
    const lines = picked.map((t, k) => ({ values: t.values, colour: COLOURS[k % COLOURS.length], width: 1.5 }));
    const env = D.envelope;
    const spectra = (env ? [{ values: env.median, colour: "#0072B2", dash: "5,4" }] : [])
      .concat(lines, [{ values: spectrum, colour: "#111", width: 2.5 }]);
    plot($("spectrum-plot"), "spectrum (black: pixel; blue: normal 1-99 %, median)", spectra, env ? [env.p1, env.p99] : null);
    if (z) {
      const zl = picked.map((t, k) => ({ values: zOf(t.values), colour: COLOURS[k % COLOURS.length] }));
      plot($("deviation-plot"), "deviation from normal (robust z)", zl, null, z, [0, -2.33, 2.33]);
    }
    const score = map[p];
    api.pixel = { i, j, row: D.rows[i], col: D.cols[j], x: xs.slice(), spectrum, z, score };
    $("viewer").dataset.pixel = JSON.stringify(api.pixel);
    const verdict = score >= D.threshold ? "at or above" : "below";
    $("readout").textContent = `pixel (row ${D.rows[i]}, column ${D.cols[j]}): score ${fmt(score)}, ${verdict} the threshold ${fmt(D.threshold)}` + (state.pinned ? " (kept; click elsewhere to move)" : "");
    const cursor = $("cursor"), fc = $("fc");
    cursor.style.left = ((j + 0.5) / w) * fc.clientWidth + "px";
    cursor.style.top = ((i + 0.5) / h) * fc.clientHeight + "px";
  }

  function at(event) {
    const r = $("fc").getBoundingClientRect();
    const i = Math.min(h - 1, Math.max(0, Math.floor(((event.clientY - r.top) / r.height) * h)));
    const j = Math.min(w - 1, Math.max(0, Math.floor(((event.clientX - r.left) / r.width) * w)));
    return [i, j];
  }

  function setUp() {
    const zoom = Math.max(1, Math.floor(384 / Math.max(h, w)));
    for (const id of ["fc", "ov"]) {
      Object.assign($(id), { width: w, height: h });
      $(id).style.width = w * zoom + "px";
      $(id).style.height = h * zoom + "px";
    }
    ["r", "g", "b"].forEach((k, n) => {
      const sel = $("band-" + k);
      D.bands.forEach((name, c) => sel.add(new Option(D.nm ? `${+D.nm[c].toFixed(1)} nm` : name, String(c))));
      sel.addEventListener("change", () => { state.bands[n] = Number(sel.value); drawFalseColour(); });
    });
    for (const [key, bands] of Object.entries(D.presets)) {
      const button = $("preset-" + key);
      if (button) button.addEventListener("click", () => { state.bands = bands.slice(); drawFalseColour(); });
    }
    $("opacity").addEventListener("input", drawOverlay);
    const stack = $("stack");
    stack.addEventListener("mousemove", (e) => show(...at(e)));
    stack.addEventListener("mouseleave", () => state.pinned && show(...state.pinned));
    stack.addEventListener("click", (e) => { state.pinned = at(e); show(...state.pinned); });
    const list = $("traces");
    D.traces.forEach((t, k) => {
      const label = document.createElement("label"), box = document.createElement("input");
      box.type = "checkbox";
      box.dataset.trace = String(k);
      box.addEventListener("change", () => {
        box.checked ? state.traces.add(k) : state.traces.delete(k);
        show(...(state.pinned || [Math.floor(h / 2), Math.floor(w / 2)]));
      });
      label.append(box, " mean of " + t.name);
      list.append(label);
    });
    document.addEventListener("keydown", (e) => {
      if (["SELECT", "INPUT"].includes(e.target.tagName)) return;
      const to = { ArrowLeft: D.nav.previous, ArrowRight: D.nav.next }[e.key];
      if (to) window.location.href = to;
    });
  }

  async function start() {
    cube = await inflate(D.cube.data);
    for (let p = 0; p < h * w; p++) {
      for (let c = 1; c < C; c++) cube[p * C + c] = (cube[p * C + c] + cube[p * C + c - 1]) & 255;
    }
    const q = new DataView((await inflate(D.map.data)).buffer);
    map = new Float64Array(h * w);
    for (let p = 0; p < h * w; p++) map[p] = D.map.min + q.getUint16(2 * p, true) * D.map.scale;
    setUp();
    drawFalseColour();
    drawOverlay();
    // Start at the map's peak: the finding the page is about.
    let best = 0;
    for (let p = 1; p < h * w; p++) if (map[p] > map[best]) best = p;
    show(Math.floor(best / w), best % w);
    api.readyMs = performance.now(); // since navigation began: the benchmark's measure
    api.ready = true;
    $("viewer").dataset.ready = "true";
  }

  start().catch((err) => { $("readout").textContent = "The viewer could not start: " + err; });
})();
{% endraw %}
