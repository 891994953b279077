// cnnlab explorer, the Sliding window view: convolution and pooling animated step by step. Every
// step (window, products, sum, output) is what /api/conv and /api/pool return: the same function
// as `cnnlab conv --json` and `cnnlab pool --json`, so the page and the terminal always agree.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const C = window.cnnlab, P = cnnlabPlots;
  let op = "conv";
  let data = null;           // the server's answer for the current settings
  let step = 0;              // the step shown, 0-based
  let timer = null;          // set while playing
  let seq = 0;
  let debounce = null;
  // Each operation keeps its own settings; empty input/kernel mean the lecture's example.
  const settings = { conv: { input: "", kernel: "", stride: 1, padding: 0, dilation: 1 },
                     pool: { input: "", size: 2, stride: 2, mode: "max" } };
  const FIELDS = { input: "s-input", kernel: "s-kernel", stride: "s-stride", padding: "s-padding",
                   dilation: "s-dilation", size: "s-size", mode: "s-mode" };

  // Integers as integers, others with up to 4 decimals: the numbers a student typed stay readable.
  const show = (v) => (Number.isInteger(v) ? String(v) : String(+v.toFixed(4)));
  const matrixText = (m) => m.map((row) => row.map(show).join(" ")).join("\n");

  function readFields() {
    for (const [key, id] of Object.entries(FIELDS)) {
      if (key in settings[op]) settings[op][key] = key === "input" || key === "kernel" || key === "mode" ? $(id).value : +$(id).value;
    }
  }

  function writeFields() {
    for (const [key, id] of Object.entries(FIELDS)) if (key in settings[op]) $(id).value = settings[op][key];
    for (const e of document.querySelectorAll("#slide-view .conv-only")) e.hidden = op !== "conv";
    for (const e of document.querySelectorAll("#slide-view .pool-only")) e.hidden = op !== "pool";
    $("op-conv").setAttribute("aria-pressed", String(op === "conv"));
    $("op-pool").setAttribute("aria-pressed", String(op === "pool"));
  }

  async function fetchSteps() {
    readFields();
    const s = settings[op], body = {};
    for (const [k, v] of Object.entries(s)) if (v !== "" && k !== "mode") body[k] = v;
    const mine = ++seq;
    let answer;
    try {
      answer = await P.postJSON(`/api/${op}`, body);
    } catch (e) {  // the server's one line (a matrix it cannot read), or no server at all
      if (mine !== seq) return;
      $("s-status").textContent = e instanceof TypeError ? "cannot reach the server: is cnnlab serve still running?"
                                                         : e.message;
      $("s-status").className = "error";
      return;
    }
    if (mine !== seq) return;
    $("s-status").textContent = "";
    $("s-status").className = "muted";
    data = answer;
    // Fill in the example only where the field is still empty: what was typed while this answer
    // was on its way is kept (its own request follows).
    const fill = (key, value) => { s[key] = value; if (!$(FIELDS[key]).value.trim()) $(FIELDS[key]).value = value; };
    if (!s.input) fill("input", matrixText(data.input));
    if (op === "conv" && !s.kernel) fill("kernel", matrixText(data.kernel));
    step = 0;
    render();
    $("slide-view").dataset.ready = String(Date.now());
  }

  const steps = () => (op === "conv" ? data.steps : data[settings.pool.mode].steps);

  function table(id, m, cls) {
    const t = $(id);
    t.replaceChildren();
    m.forEach((row, a) => {
      const tr = t.insertRow();
      row.forEach((v, b) => {
        const td = tr.insertCell();
        td.textContent = v === null ? "" : show(v);
        const c = cls ? cls(a, b) : "";
        if (c) td.className = c;
      });
    });
  }

  function render() {
    if (!data) return;
    const all = steps(), s = all[step];
    const taps = new Set();
    if (op === "conv") {
      const p = data.padding, d = data.dilation, x = data.input, kh = data.kernel.length, kw = data.kernel[0].length;
      const padded = Array.from({ length: x.length + 2 * p }, (_, a) =>
        Array.from({ length: x[0].length + 2 * p }, (_, b) => (x[a - p] && b >= p && b - p < x[0].length ? x[a - p][b - p] : 0)));
      for (let a = 0; a < kh; a++) for (let b = 0; b < kw; b++) taps.add(`${s.top + a * d},${s.left + b * d}`);
      table("s-in", padded, (a, b) => [a < p || b < p || a >= x.length + p || b >= x[0].length + p ? "pad" : "",
                                          taps.has(`${a},${b}`) ? "win" : ""].join(" ").trim());
      table("s-kernel-grid", data.kernel_used);
      table("s-products", s.products);
      $("s-in-caption").textContent = p ? `input with ${p} ring${p > 1 ? "s" : ""} of zero padding` : "input";
      $("s-formula").replaceChildren(...formula(data.output_size.formula));
      const terms = s.window.flat().map((v, i) => `${show(v)}×${paren(data.kernel_used.flat()[i])}`).join(" + ");
      $("s-sum").textContent = `out[${s.row}][${s.col}] = ${terms} = ${show(s.sum)}`;
    } else {
      const size = data.size;
      for (let a = 0; a < size; a++) for (let b = 0; b < size; b++) taps.add(`${s.top + a},${s.left + b}`);
      table("s-in", data.input, (a, b) => (taps.has(`${a},${b}`) ? "win" : ""));
      $("s-in-caption").textContent = "input";
      $("s-formula").replaceChildren(...formula(data.output_size.formula));
      const vals = s.window.flat().map(show);
      $("s-sum").textContent = settings.pool.mode === "max"
        ? `out[${s.row}][${s.col}] = max(${vals.join(", ")}) = ${show(s.value)}`
        : `out[${s.row}][${s.col}] = (${vals.join(" + ")}) / ${vals.length} = ${show(s.value)}`;
    }
    table("s-window", s.window);
    const out = op === "conv" ? data.output : data[settings.pool.mode].output, cols = out[0].length;
    const done = (a, b) => a * cols + b <= step;
    table("s-out", out.map((row, a) => row.map((v, b) => (done(a, b) ? v : null))),
          (a, b) => (a === s.row && b === s.col ? "now" : done(a, b) ? "done" : ""));
    $("s-out-caption").textContent = `output ${out.length}×${cols}`;
    $("s-counter").textContent = `step ${step + 1} of ${all.length}`;
    $("s-counter").dataset.step = step;
  }

  const paren = (v) => (v < 0 ? `(${show(v)})` : show(v));
  const formula = (f) => [op === "conv" ? "output size = floor((n + 2·padding − dilation·(k − 1) − 1) / stride) + 1"
                                         : "output size = floor((n − size) / stride) + 1",
                          document.createElement("br"), `height: ${f.height}`, document.createElement("br"),
                          `width: ${f.width}`];

  function go(to) {
    if (!data) return;
    const n = steps().length;
    step = (to + n) % n;
    render();
  }

  function play(on) {
    clearInterval(timer);
    timer = null;
    if (on) timer = setInterval(() => go(step + 1), 2400 / +$("s-speed").value);
    $("s-play").textContent = on ? "Pause" : "Play";
  }

  $("s-next").addEventListener("click", () => { play(false); go(step + 1); });
  $("s-back").addEventListener("click", () => { play(false); go(step - 1); });
  $("s-reset").addEventListener("click", () => { play(false); go(0); });
  $("s-play").addEventListener("click", () => play(!timer));
  $("s-speed").addEventListener("input", () => { if (timer) play(true); });
  $("s-mode").addEventListener("change", () => { readFields(); step = 0; render(); });
  for (const id of ["s-input", "s-kernel", "s-stride", "s-padding", "s-dilation", "s-size"]) {
    $(id).addEventListener("input", () => { clearTimeout(debounce); debounce = setTimeout(fetchSteps, 300); });
  }
  $("s-lecture").addEventListener("click", () => {
    settings[op] = op === "conv" ? { input: "", kernel: "", stride: 1, padding: 0, dilation: 1 }
                                 : { input: "", size: 2, stride: 2, mode: "max" };
    writeFields();
    fetchSteps();
  });
  for (const [id, which] of [["op-conv", "conv"], ["op-pool", "pool"]]) {
    $(id).addEventListener("click", () => {
      if (op === which) return;
      readFields();
      play(false);
      op = which;
      data = null;
      writeFields();
      fetchSteps();
    });
  }

  let started = false;
  const start = () => { if (!started) { started = true; writeFields(); fetchSteps(); } };
  document.addEventListener("cnnlab:view", (e) => { if (e.detail.id === "slide-view") start(); else play(false); });
  if (C.view === "slide-view") start();
})();
