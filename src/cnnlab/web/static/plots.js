// cnnlab explorer: helpers shared by slide.js, train.js, runs.js and robust.js (JSON requests, plain canvas drawing; no libraries).
"use strict";

const cnnlabPlots = (() => {
  const el = (tag, attrs = {}, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    e.append(...children);
    return e;
  };

  async function getJSON(url, options) {
    const res = await fetch(url, options);
    let body = {};
    try { body = await res.json(); } catch (e) { body = { error: res.statusText }; }
    if (!res.ok) throw new Error(body.error || res.statusText);
    return body;
  }
  const postJSON = (url, payload) => getJSON(url, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(payload ?? {}) });

  // ---- colours ------------------------------------------------------------------------------
  const STOPS = [[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]];
  function magma(v) {                                   // 0..255 -> black .. pale yellow
    const t = v / 255 * (STOPS.length - 1), i = Math.min(Math.floor(t), STOPS.length - 2), f = t - i;
    return STOPS[i].map((a, k) => a + f * (STOPS[i + 1][k] - a));
  }
  function diverging(v, scale) {                        // blue (-) / white (0) / red (+)
    const t = Math.max(-1, Math.min(1, v / (scale || 1)));
    return t < 0 ? [255 * (1 + t), 255 * (1 + t), 255] : [255, 255 * (1 - t), 255 * (1 - t)];
  }
  function pixels(canvas, w, h, colourOf) {
    canvas.width = w; canvas.height = h;
    const c = canvas.getContext("2d"), img = c.createImageData(w, h);
    for (let i = 0; i < w * h; i++) img.data.set([...colourOf(i), 255], 4 * i);
    c.putImageData(img, 0, 0);
    return canvas;
  }
  const gray = (canvas, values, w, h) => pixels(canvas, w, h, (i) => [values[i], values[i], values[i]]);
  // A grey image with a heat map (0..255) laid over it in red-yellow, as Grad-CAM pictures usually are.
  const overlay = (canvas, image, heat, w, h) => pixels(canvas, w, h, (i) => {
    const g = image[i] * 0.6, a = heat[i] / 255;
    return [g + (255 - g) * a, g + (200 - g) * a * a, g * (1 - a)];
  });
  function kernel(canvas, rows) {                       // a k x k filter, blue/white/red at its own scale
    const k = rows.length, flat = rows.flat(), scale = Math.max(...flat.map(Math.abs)) || 1;
    return pixels(canvas, k, k, (i) => diverging(flat[i], scale));
  }
  const pixelCanvas = (cls = "") => el("canvas", { class: ("pixelated " + cls).trim() });

  // ---- line charts ----------------------------------------------------------------------------
  // series: [{points: [[x, y], ...], color, width, dash, dots, label}]
  function lineChart(canvas, series, opts = {}) {
    const dpr = window.devicePixelRatio || 1;
    const W = canvas.clientWidth || 320, H = canvas.clientHeight || 180;
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    const c = canvas.getContext("2d");
    c.setTransform(dpr, 0, 0, dpr, 0, 0);
    c.clearRect(0, 0, W, H);
    const pts = series.flatMap((s) => s.points).filter((p) => p[1] != null && isFinite(p[1]));
    const pad = { l: 44, r: 10, t: 18, b: 28 };
    let x0 = opts.xMin ?? Math.min(0, ...pts.map((p) => p[0])), x1 = opts.xMax ?? Math.max(1, ...pts.map((p) => p[0]));
    let y0 = opts.yMin ?? Math.min(...pts.map((p) => p[1])), y1 = opts.yMax ?? Math.max(...pts.map((p) => p[1]));
    if (!pts.length) { y0 = opts.yMin ?? 0; y1 = opts.yMax ?? 1; }
    if (y1 - y0 < 1e-9) { y1 += 0.5; y0 -= 0.5; }
    if (x1 - x0 < 1e-9) x1 = x0 + 1;
    const X = (x) => pad.l + (x - x0) / (x1 - x0) * (W - pad.l - pad.r);
    const Y = (y) => H - pad.b - (y - y0) / (y1 - y0) * (H - pad.t - pad.b);
    c.font = "11px system-ui, sans-serif"; c.fillStyle = "#6b7280"; c.strokeStyle = "#e5e7eb"; c.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {                      // horizontal grid and y labels
      const y = y0 + (y1 - y0) * i / 4, py = Y(y);
      c.beginPath(); c.moveTo(pad.l, py); c.lineTo(W - pad.r, py); c.stroke();
      c.fillText(opts.yFormat ? opts.yFormat(y) : y.toFixed(2), 2, py + 4);
    }
    const xt = niceTicks(x0, x1, 6);
    for (const x of xt) c.fillText(opts.xFormat ? opts.xFormat(x) : String(+x.toFixed(2)), X(x) - 6, H - 10);
    if (opts.xLabel) c.fillText(opts.xLabel, W - pad.r - c.measureText(opts.xLabel).width, H - 1);
    if (opts.title) { c.fillStyle = "#1d2430"; c.fillText(opts.title, pad.l, 12); }
    let lx = W - pad.r;
    for (const s of [...series].reverse()) {            // legend, right-aligned on the title line
      if (!s.label) continue;
      const w = c.measureText(s.label).width;
      lx -= w + 22;
      c.fillStyle = s.color; c.fillRect(lx, 5, 12, 3); c.fillStyle = "#1d2430"; c.fillText(s.label, lx + 16, 12);
    }
    for (const s of series) {
      const p = s.points.filter((q) => q[1] != null && isFinite(q[1]));
      c.strokeStyle = s.color; c.fillStyle = s.color; c.lineWidth = s.width || 1.5; c.setLineDash(s.dash || []);
      if (!s.dotsOnly && p.length) {
        c.beginPath(); p.forEach((q, i) => (i ? c.lineTo(X(q[0]), Y(q[1])) : c.moveTo(X(q[0]), Y(q[1])))); c.stroke();
      }
      c.setLineDash([]);
      if (s.dots) for (const q of p) { c.beginPath(); c.arc(X(q[0]), Y(q[1]), s.dots, 0, 2 * Math.PI); c.fill(); }
    }
    return { X, Y };
  }
  function niceTicks(a, b, n) {
    const step0 = (b - a) / n, mag = 10 ** Math.floor(Math.log10(step0 || 1));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) || mag;
    const out = [];
    for (let x = Math.ceil(a / step) * step; x <= b + 1e-9; x += step) out.push(x);
    return out;
  }
  // Exponential moving average (TensorBoard's smoothing) of [x, y] points.
  function smooth(points, weight = 0.8) {
    let last = null;
    return points.map(([x, y]) => { if (y == null) return [x, null]; last = last == null ? y : last * weight + (1 - weight) * y; return [x, last]; });
  }

  // ---- pieces built from those ----------------------------------------------------------------
  // Learned filters [n][k][k], each with the hand-designed kernel it resembles most under it.
  function filterGrid(box, filters, matches = [], kernels = {}) {
    box.replaceChildren();
    filters.forEach((f, i) => {
      const fig = el("figure", { class: "filter" }, kernel(pixelCanvas(), f), el("figcaption", { text: `#${i}` }));
      const m = matches[i];
      if (m && m.match) {
        const name = m.match.replace(/^-/, ""), sign = m.match.startsWith("-") ? -1 : 1;
        if (kernels[name]) fig.append(kernel(pixelCanvas("kernel"), kernels[name].map((r) => r.map((v) => sign * v))));
        fig.append(el("figcaption", { class: "match", text: `${m.match} ${m.similarity.toFixed(2)}` }));
      }
      box.append(fig);
    });
  }
  // Feature maps as the server encodes them: base64 uint8 per map, scaled per map.
  function featureGrid(box, layer, most = 16) {
    box.replaceChildren();
    if (!layer) return;
    const bytes = Uint8Array.from(atob(layer.data), (ch) => ch.charCodeAt(0)), size = layer.height * layer.width;
    for (let c = 0; c < Math.min(layer.channels, most); c++) {
      const cv = pixels(pixelCanvas(), layer.width, layer.height, (i) => magma(bytes[c * size + i]));
      box.append(el("figure", {}, cv, el("figcaption", { text: `#${c}` })));
    }
  }
  function probabilityBars(box, probs, classes, mark) {
    box.replaceChildren();
    const top = probs.indexOf(Math.max(...probs));
    probs.forEach((p, i) => {
      const fill = el("span", { class: "fill" });
      fill.style.width = (100 * p).toFixed(1) + "%";
      box.append(el("div", { class: "pbar" + (i === top ? " top" : "") + (i === mark ? " mark" : ""), "data-prob": p },
        el("span", { class: "name", text: classes[i] }), el("span", { class: "track" }, fill),
        el("span", { class: "pct", text: (100 * p).toFixed(1) + "%" })));
    });
  }
  const pct = (v, d = 2) => (v == null ? "–" : (100 * v).toFixed(d) + "%");
  const seconds = (s) => (s == null ? "–" : s < 90 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min");

  return { el, getJSON, postJSON, magma, diverging, pixels, gray, overlay, kernel, pixelCanvas, lineChart,
           smooth, filterGrid, featureGrid, probabilityBars, pct, seconds };
})();
