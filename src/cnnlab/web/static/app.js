// cnnlab explorer: plain JavaScript, no libraries, no network access beyond this server.
// This file owns the navigation between views, the Draw view (drawing, uploads, the prediction
// bars) and the Kernels view; explain.js draws the Network view, slide.js the Sliding window.
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

// What the other views share. image: the 28x28 image (0-255 rows) the model last saw, drawn or
// uploaded; a "cnnlab:image" event announces a new one and "cnnlab:view" a newly shown view.
const cnnlab = window.cnnlab = { image: null, classes: [], model: null, view: null };

// ---- views ----------------------------------------------------------------------------------
const links = [...document.querySelectorAll("#nav a[data-view]")];
function showView() {
  const hash = location.hash.slice(1) || "draw";
  const current = links.find((a) => a.getAttribute("href") === "#" + hash) || links[0];
  for (const a of links) {
    const on = a === current;
    if (on) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    const section = $(a.dataset.view);
    if (section) section.hidden = !on;
  }
  cnnlab.view = current.dataset.view;
  document.dispatchEvent(new CustomEvent("cnnlab:view", { detail: { id: cnnlab.view } }));
  if (cnnlab.view === "kernels-view" && sourceIsDrawing() && drawn) applyKernel();
}
window.addEventListener("hashchange", showView);

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
  setImage(null);
}

function setImage(image) {
  cnnlab.image = image;
  document.dispatchEvent(new CustomEvent("cnnlab:image", { detail: { image } }));
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

// Live answers while drawing; the final one (stroke ended) also updates the other views.
async function requestPrediction(final) {
  if (!drawn) return;
  if (inFlight) { again = true; return; }
  inFlight = true;
  const v = version;
  try {
    const form = new FormData();
    form.append("file", await padBlob(), "drawing.png");
    const res = await fetch("/api/predict", { method: "POST", body: form });
    const body = await res.json();
    if (!res.ok) {
      showError(body.error || res.statusText);
    } else if (drawn) {
      showPrediction(body);
      $("prediction").dataset.version = v;
      if (final) {
        setImage(body.image);
        $("prediction").dataset.final = v;
        if (cnnlab.view === "kernels-view" && sourceIsDrawing()) applyKernel();
      }
    }
  } catch (err) {
    showError("request failed: " + err);
  } finally {
    inFlight = false;
    if (again) { again = false; requestPrediction(true); }
  }
}

function showError(message) {
  $("status").textContent = message;
  $("status").className = "error";
}

// ---- uploads: a file chosen or dropped goes through cnnlab predict's preparation -------------
async function predictFile(file) {
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name || "image");
  const v = ++version;
  pad.dataset.version = v;
  const res = await fetch("/api/predict", { method: "POST", body: form });
  const body = await res.json();
  if (!res.ok) { showError(`${file.name || "image"}: ${body.error || res.statusText}`); return; }
  try {  // show the photo on the pad, scaled to fit: drawing on it then edits it
    const bitmap = await createImageBitmap(file);
    const s = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
    ctx.drawImage(bitmap, (pad.width - bitmap.width * s) / 2, (pad.height - bitmap.height * s) / 2,
                  bitmap.width * s, bitmap.height * s);
    drawn = true;
  } catch (err) { /* a format the browser cannot draw: the prediction still stands */ }
  showPrediction(body);
  $("prediction").dataset.version = v;
  $("prediction").dataset.final = v;
  setImage(body.image);
}

$("photo").addEventListener("change", (e) => predictFile(e.target.files[0]));
for (const type of ["dragenter", "dragover"]) {
  pad.addEventListener(type, (e) => { e.preventDefault(); pad.classList.add("dropping"); });
}
pad.addEventListener("dragleave", () => pad.classList.remove("dropping"));
pad.addEventListener("drop", (e) => {
  e.preventDefault();
  pad.classList.remove("dropping");
  predictFile(e.dataTransfer.files[0]);
});

function showPrediction(r) {
  $("status").textContent = "";
  $("status").className = "muted";
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
Object.assign(cnnlab, { drawGray, drawRGB, diverging, magma });

async function start() {
  showView();
  const m = await (await fetch("/api/model")).json();
  classes = cnnlab.classes = m.classes;
  cnnlab.model = m;
  const acc = m.test_accuracy != null ? `, test accuracy ${(100 * m.test_accuracy).toFixed(2)}%` : "";
  const params = m.parameters ? `, ${m.parameters.toLocaleString("en")} parameters` : "";
  $("model-info").textContent = `${m.model || "model"} on ${m.dataset || "?"}${params}${acc} — ${m.source}`;
  const sel = $("kernel");
  for (const k of [...m.kernels, "custom"]) sel.add(new Option(k === "custom" ? "custom (type below)" : k, k));
  clearPad();
  showFilters();
}
start();
