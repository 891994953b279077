// cnnlab explorer: plain JavaScript, no libraries, no network access beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d");
let classes = [];
let drawn = false;        // anything on the pad?
let inFlight = false;     // one prediction request at a time ...
let again = false;        // ... and one more if the drawing changed meanwhile
let version = 0;          // strokes drawn so far: answers say which drawing they describe
let kernelSeq = 0;        // only the latest playground answer is shown

// ---- drawing (pointer events cover mouse, pen and touch) ------------------------------------
function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  drawn = false;
  $("prediction").textContent = "–";
  $("confidence").textContent = "–";
  $("status").textContent = "";
  renderBars(null);
  drawGray($("seen"), null, 28, 28);
  for (const id of ["fm1", "fm2"]) $(id).replaceChildren();
}

function point(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
}

let last = null;
pad.addEventListener("pointerdown", (e) => {
  e.preventDefault();
  pad.setPointerCapture(e.pointerId);
  last = point(e);
  stroke(last, last);
});
pad.addEventListener("pointermove", (e) => {
  if (!last) return;
  e.preventDefault();
  const p = point(e);
  stroke(last, p);
  last = p;
  if ($("live").checked) requestPrediction(false);
});
const endStroke = (e) => {
  if (!last) return;
  last = null;
  requestPrediction(true);
};
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function stroke(a, b) {
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 20;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(a[0], a[1]);
  ctx.lineTo(b[0], b[1]);
  ctx.stroke();
  drawn = true;
  pad.dataset.version = ++version;
}

$("clear").addEventListener("click", clearPad);

// ---- prediction -----------------------------------------------------------------------------
const padBlob = () => new Promise((resolve) => pad.toBlob(resolve, "image/png"));

async function requestPrediction(withFeatures) {
  if (!drawn) return;
  if (inFlight) { again = true; return; }
  inFlight = true;
  const v = version;
  try {
    const form = new FormData();
    form.append("file", await padBlob(), "drawing.png");
    const res = await fetch("/api/predict" + (withFeatures ? "?features=1" : ""), { method: "POST", body: form });
    const body = await res.json();
    if (!res.ok) {
      $("status").textContent = body.error || res.statusText;
    } else if (drawn) {
      showPrediction(body);
      $("prediction").dataset.version = v;
      if (withFeatures) {
        showFeatures(body.features || []);
        $("fm1").dataset.version = v;
        if (sourceIsDrawing()) applyKernel();
      }
    }
  } catch (err) {
    $("status").textContent = "request failed: " + err;
  } finally {
    inFlight = false;
    if (again) { again = false; requestPrediction(true); }
  }
}

function showPrediction(r) {
  $("status").textContent = "";
  $("prediction").textContent = r.label;
  $("prediction").dataset.class = r.prediction;
  $("confidence").textContent = (100 * r.probabilities[r.prediction]).toFixed(1) + "%";
  renderBars(r.probabilities, r.prediction);
  drawGray($("seen"), r.image.flat(), 28, 28);
}

function renderBars(probs, top) {
  const box = $("bars");
  box.replaceChildren();
  classes.forEach((name, i) => {
    const p = probs ? probs[i] : 0;
    const row = document.createElement("div");
    row.className = "bar" + (probs && i === top ? " top" : "");
    row.dataset.prob = p;
    row.innerHTML = `<span class="name"></span><span class="track"><span class="fill"></span></span><span class="pct"></span>`;
    row.querySelector(".name").textContent = name;
    row.querySelector(".fill").style.width = (100 * p).toFixed(2) + "%";
    row.querySelector(".pct").textContent = probs ? (100 * p).toFixed(1) + "%" : "";
    box.appendChild(row);
  });
}

// ---- pictures of numbers --------------------------------------------------------------------
function drawGray(canvas, values, w, h) {       // values 0-255, or null for black
  canvas.width = w; canvas.height = h;
  const c = canvas.getContext("2d");
  const img = c.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const v = values ? values[i] : 0;
    img.data.set([v, v, v, 255], 4 * i);
  }
  c.putImageData(img, 0, 0);
}

// Magma-like colour map for activations (0 = black, 255 = pale yellow).
const STOPS = [[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]];
function magma(v) {
  const t = v / 255 * (STOPS.length - 1), i = Math.min(Math.floor(t), STOPS.length - 2), f = t - i;
  return STOPS[i].map((a, k) => a + f * (STOPS[i + 1][k] - a));
}
function diverging(v, scale) {                   // blue (-) / white (0) / red (+)
  const t = Math.max(-1, Math.min(1, v / (scale || 1)));
  return t < 0 ? [255 * (1 + t), 255 * (1 + t), 255] : [255, 255 * (1 - t), 255 * (1 - t)];
}
function drawRGB(canvas, w, h, colourOf) {
  canvas.width = w; canvas.height = h;
  const c = canvas.getContext("2d");
  const img = c.createImageData(w, h);
  for (let i = 0; i < w * h; i++) img.data.set([...colourOf(i), 255], 4 * i);
  c.putImageData(img, 0, 0);
}

function showFeatures(layers) {
  ["fm1", "fm2"].forEach((id, n) => {
    const box = $(id);
    box.replaceChildren();
    const L = layers[n];
    if (!L) { $(id + "-shape").textContent = "(this model has no such convolution layer)"; return; }
    $(id + "-shape").textContent = `(${L.module}: ${L.channels} maps of ${L.height}×${L.width})`;
    const bytes = Uint8Array.from(atob(L.data), (ch) => ch.charCodeAt(0));
    const size = L.height * L.width;
    for (let c = 0; c < L.channels; c++) {
      const fig = document.createElement("figure");
      const cv = document.createElement("canvas");
      cv.className = "pixelated";
      drawRGB(cv, L.width, L.height, (i) => magma(bytes[c * size + i]));
      fig.append(cv, document.createTextNode(`#${c} max ${L.max[c].toFixed(2)}`));
      box.appendChild(fig);
    }
  });
}

async function showFilters() {
  const r = await (await fetch("/api/filters")).json();
  const box = $("filters");
  if (!r.filters.length) { $("filters-shape").textContent = "(" + r.note + ")"; return; }
  $("filters-shape").textContent = `(${r.layer}: ${r.shape[0]} filters of ${r.shape[2]}×${r.shape[3]})`;
  r.filters.forEach((f, n) => {
    const k = f[0], kh = k.length, kw = k[0].length;
    const scale = Math.max(...k.flat().map(Math.abs));
    const fig = document.createElement("figure");
    const cv = document.createElement("canvas");
    cv.className = "pixelated";
    drawRGB(cv, kw, kh, (i) => diverging(k[Math.floor(i / kw)][i % kw], scale));
    fig.append(cv, document.createTextNode(`#${n}`));
    box.appendChild(fig);
  });
}

// ---- kernel playground ----------------------------------------------------------------------
const sourceIsDrawing = () => document.querySelector("input[name=source]:checked").value === "drawing";

async function applyKernel() {
  const status = $("kernel-status");
  const choice = $("kernel").value;
  const kernel = choice === "custom" ? $("custom").value : choice;
  let file;
  if (sourceIsDrawing()) {
    if (!drawn) { status.textContent = "draw a digit first (or choose an image)"; return; }
    file = await padBlob();
  } else {
    file = $("upload").files[0];
    if (!file) { status.textContent = "choose an image file first"; return; }
  }
  const form = new FormData();
  form.append("file", file, file.name || "drawing.png");
  form.append("kernel", kernel);
  const seq = ++kernelSeq;
  const res = await fetch("/api/kernel", { method: "POST", body: form });
  const r = await res.json();
  if (seq !== kernelSeq) return;  // a newer request is on its way
  if (!res.ok) { status.textContent = r.error; status.className = "error"; return; }
  status.className = "muted";
  status.textContent = `${r.kernel_name} kernel applied to a ${r.input[0].length}×${r.input.length} image`;
  const h = r.input.length, w = r.input[0].length;
  drawGray($("k-in"), r.input.flat(), w, h);
  const out = r.output.flat();
  const signed = r.min < -1e-6;
  const scale = Math.max(Math.abs(r.min), Math.abs(r.max)) || 1;
  drawRGB($("k-out"), w, h, signed ? (i) => diverging(out[i], scale)
                                    : (i) => { const v = 255 * out[i] / scale; return [v, v, v]; });
  $("k-range").textContent = signed ? "(blue < 0 < red)" : "(black = 0)";
  const table = $("kernel-matrix");
  table.replaceChildren();
  for (const row of r.kernel) {
    const tr = table.insertRow();
    for (const v of row) tr.insertCell().textContent = Number.isInteger(v) ? v : v.toFixed(3);
  }
}

$("apply").addEventListener("click", applyKernel);
$("kernel").addEventListener("change", applyKernel);
$("upload").addEventListener("change", () => {
  document.querySelector("input[name=source][value=upload]").checked = true;
  applyKernel();
});

// ---- start ----------------------------------------------------------------------------------
async function start() {
  const m = await (await fetch("/api/model")).json();
  classes = m.classes;
  const acc = m.test_accuracy != null ? `, test accuracy ${(100 * m.test_accuracy).toFixed(2)}%` : "";
  const params = m.parameters ? `, ${m.parameters.toLocaleString("en")} parameters` : "";
  $("model-info").textContent = `${m.model || "model"} on ${m.dataset || "?"}${params}${acc} — ${m.source}`;
  const sel = $("kernel");
  for (const k of [...m.kernels, "custom"]) sel.add(new Option(k === "custom" ? "custom (type below)" : k, k));
  clearPad();
  showFilters();
}
start();
