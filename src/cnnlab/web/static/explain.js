// cnnlab explorer, the Network view: every layer's output for the image the model last saw, and
// any unit's arithmetic. The numbers come from the server (/api/network, /api/unit), which reads
// them from the model's own forward pass; this file only lays them out.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const C = window.cnnlab;
  let net = null;           // /api/network's answer for the current image
  let stale = true;         // the image changed since net was fetched
  let chosen = null;        // {layer, unit}: the unit whose arithmetic is shown
  let netSeq = 0, unitSeq = 0;   // only the latest answer of each kind is shown

  // Four decimals everywhere (the tests compare shown numbers with the forward pass to 1e-4);
  // very large or small magnitudes in exponent form.
  const fmt = (v) => {
    if (v === null || v === undefined) return "–";
    const a = Math.abs(v);
    return a !== 0 && (a >= 1e5 || a < 1e-4) ? v.toExponential(4) : v.toFixed(4);
  };
  const el = (tag, attrs = {}, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    e.append(...children);
    return e;
  };
  const num = (v, role) => el("span", { class: "num", "data-role": role, text: fmt(v) });
  const KIND = { input: "input", conv: "convolution", pool: "pooling", activation: "activation",
                 norm: "batch norm", flatten: "flatten", linear: "linear", dropout: "dropout",
                 softmax: "softmax", other: "layer" };

  // ---- values: int8 with a per-layer scale, as /api/network packs them --------------------
  function values(L) {
    if (!L.values) {
      const b = atob(L.data);
      L.values = new Float32Array(b.length);
      for (let i = 0; i < b.length; i++) {
        const q = b.charCodeAt(i);
        L.values[i] = (q > 127 ? q - 256 : q) / 127 * L.scale;
      }
    }
    return L.values;
  }

  function drawMap(canvas, L, channel) {
    if (L.kind === "input") { C.drawGray(canvas, net.image.flat(), 28, 28); return; }
    const [, h, w] = L.shape, v = values(L), off = channel * h * w;
    C.drawRGB(canvas, w, h, (i) => C.diverging(v[off + i], L.scale));
  }

  // A vector as a grid of cells: `rows` tall, filled row by row.
  function drawVector(canvas, L, cols) {
    const v = values(L), n = v.length, rows = Math.ceil(n / cols);
    C.drawRGB(canvas, cols, rows, (i) => (i < n ? C.diverging(v[i], L.scale) : [243, 244, 246]));
    Object.assign(canvas.dataset, { rows, cols });
  }

  // ---- the strip of layers ---------------------------------------------------------------------
  async function load() {
    if (!C.image) {
      net = null;
      $("net-strip").replaceChildren();
      $("unit-card").hidden = true;
      $("net-note").replaceChildren("Draw a digit (or upload one) on the ", el("a", { href: "#draw", text: "Draw" }),
                                    " tab: every layer's output for it appears here.");
      return;
    }
    stale = false;
    const image = C.image, mine = ++netSeq;
    const res = await fetch("/api/network", { method: "POST", headers: { "content-type": "application/json" },
                                              body: JSON.stringify({ image }) });
    const body = await res.json();
    if (mine !== netSeq) return;
    if (!res.ok) { $("net-note").textContent = body.error; $("net-note").className = "error"; return; }
    net = body;
    $("net-note").className = "muted";
    $("net-note").textContent = (body.note ? body.note + " " : "") +
      `${body.layers.length - 2} layers between the input and the probabilities; the model says ` +
      `${body.label} (${(100 * body.probabilities[body.prediction]).toFixed(1)}%).`;
    $("net-model").textContent = `(${body.model})`;
    renderStrip();
    $("net-strip").dataset.ready = String(Date.now());
    if (chosen && chosen.layer < net.layers.length) showUnit(chosen.layer, chosen.unit);
    else $("unit-card").hidden = true;
  }

  function renderStrip() {
    const strip = $("net-strip");
    strip.replaceChildren(...net.layers.map(column));
  }

  function column(L) {
    const head = el("div", { class: "layer-head", title: `${L.name} ${L.type}${L.describe ? " " + L.describe : ""}` },
      el("b", { text: label(L) }), L.kind === "input" ? "the image" : L.name, el("br"),
      L.shape.join("×"));
    if (L.spatial && L.kind !== "input" && L.receptive_field) head.append(` · RF ${side(L.receptive_field)}`);
    const box = el("div", { class: "layer", "data-index": L.index, "data-kind": L.kind }, head);
    if (L.kind === "dropout") {
      box.append(el("div", { class: "skip", text: "passes every value through unchanged when predicting" }));
    } else if (L.shape.length === 3) {
      box.append(mapsGrid(L));
    } else if (L.shape[0] <= 16) {
      box.append(classList(L));
    } else {
      const cv = el("canvas", { class: "pixelated", "aria-label": `${L.name}: ${L.shape[0]} values` });
      const cols = Math.ceil(L.shape[0] / 64);
      drawVector(cv, L, cols);
      cv.style.width = `${cols * 4}px`;
      cv.style.height = `${Math.ceil(L.shape[0] / cols) * 4}px`;
      cv.addEventListener("click", (e) => pick(L, cv, e));
      box.append(el("div", { class: "vector" }, cv));
    }
    return box;
  }

  // ReLU, tanh, max pool...: what the column does, in a word or two.
  const label = (L) => (L.kind === "activation" ? L.type : L.kind === "pool" ? L.type.replace(/Pool2d$/, " pool")
    .replace(/^Adaptive/, "global ").toLowerCase() : KIND[L.kind] || L.kind);
  const side = (hw) => (hw[0] === hw[1] ? `${hw[0]}` : `${hw[0]}×${hw[1]}`);

  function mapsGrid(L) {
    const [c, h] = L.shape;
    const tile = L.kind === "input" ? 64 : h >= 20 ? 36 : h >= 10 ? 28 : h >= 4 ? 22 : 16;
    const grid = el("div", { class: "maps" });
    grid.style.gridTemplateColumns = `repeat(${Math.ceil(c / 12)}, ${tile}px)`;
    for (let ch = 0; ch < c; ch++) {
      const cv = el("canvas", { class: "pixelated", role: "button", tabindex: "0", "data-layer": L.index,
                                "data-channel": ch, "aria-label": `${L.name} channel ${ch}` });
      cv.style.width = cv.style.height = `${tile}px`;
      drawMap(cv, L, ch);
      const open = () => selectMap(L.index, ch);
      cv.addEventListener("click", open);
      cv.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
      grid.append(cv);
    }
    return grid;
  }

  function labels(L) {
    return L.shape[0] === net.classes.length && (L.kind === "softmax" || L.index === net.layers.length - 2)
      ? net.classes : null;
  }

  function classList(L) {
    const list = el("div", { class: "classes" }), v = L.exact || values(L), names = labels(L);
    for (let i = 0; i < L.shape[0]; i++) {
      const b = el("button", { type: "button", "data-layer": L.index, "data-unit": i,
                               text: names ? names[i] : `#${i}` });
      b.addEventListener("click", () => showUnit(L.index, [i]));
      list.append(b, el("span", { class: "v", text: v[i].toFixed(3) }));
    }
    return list;
  }

  // A click on a vector canvas: the cell under the pointer.
  function pick(L, canvas, e) {
    const r = canvas.getBoundingClientRect(), rows = +canvas.dataset.rows, cols = +canvas.dataset.cols;
    const row = Math.floor((e.clientY - r.top) / r.height * rows), col = Math.floor((e.clientX - r.left) / r.width * cols);
    const i = row * cols + col;
    if (i < L.shape[0]) showUnit(L.index, [i]);
  }

  // ---- one layer enlarged, one unit explained ---------------------------------------------------
  function selectMap(layer, channel) {
    const L = net.layers[layer], [, h, w] = L.shape, v = values(L), off = channel * h * w;
    let best = 0;
    for (let i = 1; i < h * w; i++) if (v[off + i] > v[off + best]) best = i;
    showUnit(layer, L.kind === "input" ? [0, Math.floor(best / w), best % w] : [channel, Math.floor(best / w), best % w]);
  }

  async function showUnit(layer, unit) {
    chosen = { layer, unit };
    const mine = ++unitSeq;
    const res = await fetch("/api/unit", { method: "POST", headers: { "content-type": "application/json" },
                                           body: JSON.stringify({ image: net.image, layer, unit }) });
    const u = await res.json();
    if (mine !== unitSeq) return;
    const card = $("unit-card");
    card.hidden = false;
    if (!res.ok) { $("math").replaceChildren(el("p", { class: "error", text: u.error })); return; }
    renderPictures(u);
    renderMath(u);
    for (const e of document.querySelectorAll(".layer.selected, .maps canvas.selected, .classes .selected")) {
      e.classList.remove("selected");
    }
    document.querySelector(`.layer[data-index="${layer}"]`)?.classList.add("selected");
    if (unit.length === 3) {
      document.querySelector(`.maps canvas[data-layer="${layer}"][data-channel="${unit[0]}"]`)?.classList.add("selected");
    } else {
      document.querySelector(`.classes button[data-layer="${layer}"][data-unit="${unit[0]}"]`)?.classList.add("selected");
    }
    card.dataset.layer = layer;
    card.dataset.unit = unit.join(",");
  }

  function outline(stage, canvas, top, left, bottom, right, rows, cols, cls = "") {
    const o = el("div", { class: "outline " + cls });
    Object.assign(o.style, { top: `${top / rows * 100}%`, left: `${left / cols * 100}%`,
                             height: `${(bottom - top + 1) / rows * 100}%`, width: `${(right - left + 1) / cols * 100}%` });
    stage.append(o);
    return o;
  }

  function clearStage(id) { for (const o of $(id).querySelectorAll(".outline")) o.remove(); }

  function renderPictures(u) {
    const L = net.layers[u.layer];
    for (const id of ["zoom-stage", "input-stage", "prev-stage"]) clearStage(id);
    const zoom = $("zoom");
    zoom.dataset.layer = u.layer;
    if (L.shape.length === 3) {
      const [, h, w] = L.shape;
      drawMap(zoom, L, u.unit[0]);
      Object.assign(zoom.dataset, { rows: h, cols: w, channel: u.unit[0], kind: "map" });
      $("zoom-caption").textContent = `${L.name} channel ${u.unit[0]} (${h}×${w}): click any unit`;
      outline($("zoom-stage"), zoom, u.unit[1], u.unit[2], u.unit[1], u.unit[2], h, w, "unit");
    } else {
      const n = L.shape[0], cols = Math.ceil(Math.sqrt(n));
      drawVector(zoom, L, cols);
      zoom.dataset.kind = "vector";
      $("zoom-caption").textContent = `${L.name}: ${n} values, row by row: click any unit`;
      const i = u.unit[0];
      outline($("zoom-stage"), zoom, Math.floor(i / cols), i % cols, Math.floor(i / cols), i % cols,
              Math.ceil(n / cols), cols, "unit");
    }
    const rf = u.receptive_field;
    $("fig-input").hidden = !rf;
    if (rf) {
      C.drawGray($("rf-input"), net.image.flat(), 28, 28);
      outline($("input-stage"), $("rf-input"), rf.top, rf.left, rf.bottom, rf.right, 28, 28);
      $("fig-input").querySelector("figcaption").textContent =
        `receptive field on the input: rows ${rf.top}-${rf.bottom}, columns ${rf.left}-${rf.right}` +
        (rf.size[0] > rf.bottom - rf.top + 1 || rf.size[1] > rf.right - rf.left + 1
          ? ` (${rf.size.join("×")} counting the padding outside the image)` : "");
    }
    renderPrevious(u);
  }

  // The previous layer's map with the window this unit read outlined.
  function renderPrevious(u) {
    const P = u.input_layer !== null ? net.layers[u.input_layer] : null;
    let channel = null, box = null, what = "";
    if (P && P.shape.length === 3) {
      if (u.kind === "conv") {
        channel = u.channels[u.order[0]];
        box = [u.rows[0], u.cols[0], u.rows.at(-1), u.cols.at(-1)];
        what = `the window, shown on the channel that adds the most of ${u.channels.length}`;
      } else if (u.kind === "pool") {
        channel = u.channel; box = [u.rows[0], u.cols[0], u.rows.at(-1), u.cols.at(-1)]; what = "the window";
      } else if (u.kind === "flatten") {
        channel = u.source[0]; box = [u.source[1], u.source[2], u.source[1], u.source[2]]; what = "where this value comes from";
      } else if (u.unit.length === 3) {
        channel = u.unit[0]; box = [u.unit[1], u.unit[2], u.unit[1], u.unit[2]]; what = "the value it transforms";
      }
    }
    $("fig-prev").hidden = channel === null;
    if (channel === null) return;
    const prev = $("rf-prev");
    drawMap(prev, P, channel);
    Object.assign(prev.dataset, { layer: P.index, channel });
    $("prev-caption").textContent = `${P.name} channel ${channel}: ${what}`;
    outline($("prev-stage"), prev, box[0], box[1], box[2], box[3], P.shape[1], P.shape[2]);
  }

  $("zoom").addEventListener("click", (e) => {
    const zoom = $("zoom"), r = zoom.getBoundingClientRect();
    const rows = +zoom.dataset.rows, cols = +zoom.dataset.cols, layer = +zoom.dataset.layer;
    const row = Math.min(rows - 1, Math.floor((e.clientY - r.top) / r.height * rows));
    const col = Math.min(cols - 1, Math.floor((e.clientX - r.left) / r.width * cols));
    if (zoom.dataset.kind === "map") showUnit(layer, [+zoom.dataset.channel, row, col]);
    else if (row * cols + col < net.layers[layer].shape[0]) showUnit(layer, [row * cols + col]);
  });

  // ---- the arithmetic, kind by kind ------------------------------------------------------------
  function renderMath(u) {
    const L = net.layers[u.layer];
    const where = u.unit.length === 3 ? `channel ${u.unit[0]}, row ${u.unit[1]}, column ${u.unit[2]}`
      : `unit ${u.unit[0]}${labels(L) ? ` (class ${labels(L)[u.unit[0]]})` : ""}`;
    const what = u.name === u.kind ? u.name : `${label(L)} ${u.name}`;
    $("unit-title").textContent = `${what}${u.describe ? ` (${u.describe})` : ""}: ${where}`;
    const parts = (MATH[u.kind] || other)(u);
    parts.push(el("p", {}, "the layer's output in the forward pass: ", num(u.value, "value")));
    for (const t of u.then || []) parts.push(...then(t));
    $("math").replaceChildren(...parts);
  }

  function mini(m, role, opts = {}) {
    const t = el("table", { class: "mini", "data-role": role });
    m.forEach((row, a) => {
      const tr = t.insertRow();
      row.forEach((v, b) => {
        const td = tr.insertCell();
        td.textContent = v === null ? "pad" : fmt(v);
        if (opts.pad && opts.pad(a, b)) td.className = "pad";
        if (opts.chosen && opts.chosen[0] === a && opts.chosen[1] === b) td.className = "chosen";
      });
    });
    return t;
  }

  function conv(u) {
    const P = net.layers[u.input_layer], [, H, W] = P.shape;
    const outside = (a, b) => u.rows[a] < 0 || u.rows[a] >= H || u.cols[b] < 0 || u.cols[b] >= W;
    const shown = 4, box = el("div", { class: "channels" });
    const addChannel = (k) => {
      box.append(el("div", { class: "trio", "data-channel": u.channels[k] },
        el("span", { text: `channel ${u.channels[k]}` }), mini(u.window[k], "window", { pad: outside }),
        el("span", { text: "×" }), mini(u.kernel[k], "kernel"), el("span", { text: "=" }),
        mini(u.products[k], "products"), el("span", {}, "sum ", num(u.channel_sums[k], "channel-sum"))));
    };
    u.order.slice(0, shown).forEach(addChannel);
    const parts = [el("p", { class: "eq", text: `out = Σ over ${u.channels.length} input channel(s) of ` +
      `Σ (window × kernel)${u.bias !== null ? " + bias" : ""}; rows ${u.rows.join(",")} and columns ` +
      `${u.cols.join(",")} of ${P.name}` + (u.rows.some((r) => r < 0 || r >= H) || u.cols.some((c) => c < 0 || c >= W)
        ? " (pad: the zero padding outside the map)" : "") }), box];
    if (u.order.length > shown) {
      const more = el("button", { type: "button", class: "secondary", text: `show all ${u.order.length} channels` });
      more.addEventListener("click", () => { more.remove(); u.order.slice(shown).forEach(addChannel); });
      parts.push(el("p", { class: "muted" }, `the ${shown} channels whose sums are largest in size; `, more));
    }
    const n = u.channel_sums.length;
    parts.push(el("p", { class: "eq" }, n <= 16 ? `channel sums: ${u.channel_sums.map(fmt).join(" + ")} = `
                                                : `the ${n} channel sums add up to `, num(u.sum, "sum")));
    parts.push(u.bias === null
      ? el("p", { class: "eq" }, "this layer has no bias: ", num(u.result, "result"))
      : el("p", { class: "eq" }, num(u.sum, "sum-again"), " + bias ", num(u.bias, "bias"), " = ", num(u.result, "result")));
    return parts;
  }

  function pool(u) {
    const P = net.layers[u.input_layer];
    const window = mini(u.window, "window", { chosen: u.chosen,
      pad: (a, b) => u.rows[a] < 0 || u.rows[a] >= P.shape[1] || u.cols[b] < 0 || u.cols[b] >= P.shape[2] });
    const how = u.mode === "max"
      ? el("p", { class: "eq" }, `the largest of the ${u.window.flat().length} values in the window: `, num(u.result, "result"))
      : el("p", { class: "eq" }, "(sum ", num(u.sum, "sum"), `) / ${u.count} = `, num(u.result, "result"));
    return [el("p", { text: `channel ${u.channel}, rows ${u.rows[0]}-${u.rows.at(-1)}, columns ` +
                            `${u.cols[0]}-${u.cols.at(-1)} of ${P.name}:` }), window, how];
  }

  function elementwise(u) {
    return [el("p", { class: "eq" }, `${u.formula} with x = `, num(u.input_value, "input"), ...normTerms(u),
               " gives ", num(u.result, "result"))];
  }

  function normTerms(u) {
    if (u.mean === undefined) return [];
    return [`, mean ${fmt(u.mean)}, var ${fmt(u.var)}, eps ${u.eps}, gamma ${fmt(u.gamma)}, beta ${fmt(u.beta)}`];
  }

  function then(t) {
    const what = t.kind === "activation" ? t.type : KIND[t.kind] || t.kind;
    return [el("p", { class: "eq" }, `then ${what} ${t.name}: ${t.formula} with x = `,
                num(t.input_value, "then-input"), ...normTerms(t), " = ", num(t.value, "then-value"))];
  }

  function linear(u) {
    const P = net.layers[u.input_layer];
    const t = el("table", { class: "contrib", "data-role": "contributions" });
    t.append(el("tr", {}, ...["input", "value", "weight", "product"].map((h) => el("th", { text: h }))));
    for (const c of u.contributions) {
      const name = c.source ? `#${c.index} (map ${c.source[0]}, ${c.source[1]}, ${c.source[2]})` : `#${c.index}`;
      t.append(el("tr", {}, el("td", { text: name }), el("td", { text: fmt(c.input) }),
                  el("td", { text: fmt(c.weight) }), el("td", { text: fmt(c.product) })));
    }
    const parts = [el("p", { class: "eq", text: `out = Σ over the ${u.inputs} values of ${P.name} of value × weight` +
                                               `${u.bias !== null ? " + bias" : ""}; the largest products:` }), t];
    if (u.rest_count) parts.push(el("p", { class: "eq" }, `the other ${u.rest_count} products add up to `, num(u.rest, "rest")));
    parts.push(el("p", { class: "eq" }, "sum ", num(u.sum, "sum"), ...(u.bias === null ? [] : [" + bias ",
                  num(u.bias, "bias")]), " = ", num(u.result, "result")));
    if (u.weight_image) {
      const cv = el("canvas", { class: "pixelated weights", "aria-label": "this unit's weights as an image" });
      const w = u.weight_image, flat = w.flat(), scale = Math.max(...flat.map(Math.abs));
      C.drawRGB(cv, w[0].length, w.length, (i) => C.diverging(flat[i], scale));
      cv.style.width = cv.style.height = "140px";
      parts.push(el("p", { class: "muted", text: "its weights as an image: red pixels push this unit up, blue down" }), cv);
    }
    return parts;
  }

  function softmax(u) {
    const names = net.classes.length === u.logits.length ? net.classes : u.logits.map((_, i) => `#${i}`);
    const t = el("table", { class: "contrib", "data-role": "softmax" });
    t.append(el("tr", {}, ...["class", "logit z", u.shift ? `e^(z - ${fmt(u.shift)})` : "e^z", "probability"]
                              .map((h) => el("th", { text: h }))));
    u.logits.forEach((z, i) => {
      const tr = el("tr", {}, el("td", { text: names[i] }), el("td", { text: fmt(z) }), el("td", { text: fmt(u.exps[i]) }),
                    el("td", { text: fmt(u.probabilities[i]) }));
      if (i === u.unit[0]) tr.className = "chosen";
      t.append(tr);
    });
    const i = u.unit[0];
    return [t, el("p", { class: "eq" }, "sum of the exponentials: ", num(u.sum, "sum")),
            el("p", { class: "eq" }, `p(${names[i]}) = `, num(u.exps[i], "exp"), " / ", num(u.sum, "sum-again"),
               " = ", num(u.result, "result"))];
  }

  function input(u) {
    return [el("p", { class: "eq" }, "pixel ", num(u.raw, "raw"), ` (0-255), normalised: (pixel / 255 - ${u.mean}) / ${u.std} = `,
               num((u.raw / 255 - u.mean) / u.std, "result"))];
  }

  function flatten(u) {
    const [c, y, x] = u.source;
    return [el("p", { text: `flatten lays the ${u.input_shape.join("×")} maps out as one vector of ` +
                            `${u.input_shape.reduce((a, b) => a * b)} values: this is channel ${c}, row ${y}, column ${x}.` })];
  }

  function other(u) { return [el("p", { class: "muted", text: u.note || "" })]; }

  const MATH = { conv, pool, activation: elementwise, norm: elementwise, dropout: elementwise, linear, softmax,
                 input, flatten };

  // ---- when to fetch ---------------------------------------------------------------------------
  document.addEventListener("cnnlab:image", () => { stale = true; if (C.view === "network-view") load(); });
  document.addEventListener("cnnlab:view", (e) => { if (e.detail.id === "network-view" && stale) load(); });
  if (C.view === "network-view") load();
})();
