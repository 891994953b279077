// cnnlab explorer, Robustness: move, turn and scale the drawn digit and watch the prediction and the
// feature maps; find the smallest pixel change that flips the prediction (fast gradient sign).
"use strict";

(() => {
  const view = document.getElementById("robust-view");
  if (!view) return;
  const P = cnnlabPlots, el = P.el, $ = (id) => document.getElementById(id);
  view.classList.add("card");
  const SLIDERS = [["dx", "shift right", -10, 10, 0.5, 0, "px"], ["dy", "shift down", -10, 10, 0.5, 0, "px"],
                   ["angle", "rotate", -90, 90, 1, 0, "°"], ["scale", "scale", 0.5, 2, 0.05, 1, "×"]];
  view.innerHTML = `
    <h2>Is the answer robust?</h2>
    <p class="muted">Pooling and convolution make a CNN tolerant of small shifts, not of everything. Take your drawing,
      move, turn and scale it, and watch the prediction and the first layer's feature maps.</p>
    <div class="buttons">
      <button id="robust-take" type="button">Use my drawing</button>
      <button id="robust-reset" type="button" class="secondary">Reset sliders</button>
      <span id="robust-status" class="muted" role="status">Draw a digit above first.</span>
    </div>
    <div class="robust-row">
      <div class="robust-sliders">${SLIDERS.map(([k, label, lo, hi, step, v, unit]) => `
        <label>${label} <output id="robust-${k}-value">${v}${unit}</output>
          <input type="range" id="robust-${k}" min="${lo}" max="${hi}" step="${step}" value="${v}" disabled></label>`).join("")}
      </div>
      <figure class="big-digit"><canvas id="robust-image" class="pixelated" width="28" height="28"></canvas>
        <figcaption>what the network sees</figcaption></figure>
      <div class="robust-answer">
        <div><span class="muted">prediction</span> <span id="robust-prediction" class="big">–</span>
          <span id="robust-confidence" class="muted"></span></div>
        <div id="robust-bars" class="pbars"></div>
      </div>
    </div>
    <h3>First conv layer's feature maps <span class="muted" id="robust-fm-note"></span></h3>
    <div id="robust-maps" class="maps"></div>
    <h3>The smallest change that flips it</h3>
    <p class="muted">One gradient step of the loss with respect to the pixels, taken with growing size ε (grey levels
      out of 255) until the prediction changes: x + ε·sign(∇x loss).</p>
    <div class="buttons"><button id="robust-fgsm" type="button" disabled>Find it</button>
      <span id="robust-fgsm-status" class="muted" role="status"></span></div>
    <div id="robust-fgsm-result" class="fgsm" hidden>
      <figure><canvas id="fgsm-original" class="pixelated"></canvas><figcaption id="fgsm-original-caption"></figcaption></figure>
      <span class="op">+</span>
      <figure><canvas id="fgsm-delta" class="pixelated"></canvas><figcaption id="fgsm-delta-caption"></figcaption></figure>
      <span class="op">=</span>
      <figure><canvas id="fgsm-adversarial" class="pixelated"></canvas><figcaption id="fgsm-adversarial-caption"></figcaption></figure>
    </div>`;

  let original = null, classes = [], seq = 0, busy = false, again = false;

  async function take() {
    const pad = document.getElementById("pad");
    if (!pad) return status("there is no drawing pad on this page", "error");
    const blob = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
    const form = new FormData();
    form.append("file", blob, "drawing.png");
    try {
      const r = await P.getJSON("/api/predict", { method: "POST", body: form });
      original = r.image;
      classes = r.probabilities.map((_, i) => (r.top_k.find((t) => t.class === i) || {}).label ?? String(i));
      for (const [k] of SLIDERS) $(`robust-${k}`).disabled = false;
      $("robust-fgsm").disabled = false;
      status(`your drawing, predicted ${r.label}: now move the sliders`);
      update();
    } catch (e) {
      status(e.message.includes("blank") ? "draw a digit above first" : e.message, "error");
    }
  }

  async function update() {
    if (!original) return;
    if (busy) { again = true; return; }        // one request at a time, and one more for the latest sliders
    busy = true;
    const body = { image: original };
    for (const [k, , , , , , unit] of SLIDERS) {
      body[k] = Number($(`robust-${k}`).value);
      $(`robust-${k}-value`).textContent = body[k] + unit;
    }
    const mine = ++seq;
    try {
      const r = await P.postJSON("/api/robustness", body);
      if (mine === seq) show(r);
    } catch (e) { status(e.message, "error"); }
    busy = false;
    if (again) { again = false; update(); }
  }

  function show(r) {
    P.gray($("robust-image"), r.image.flat(), 28, 28);
    $("robust-prediction").textContent = r.label;
    $("robust-prediction").dataset.class = r.prediction;
    $("robust-confidence").textContent = P.pct(r.probabilities[r.prediction], 1);
    P.probabilityBars($("robust-bars"), r.probabilities, classes);
    const layer = r.features && r.features[0];
    P.featureGrid($("robust-maps"), layer);
    $("robust-fm-note").textContent = layer ? `(${layer.module}: ${layer.channels} maps of ${layer.height}×${layer.width})` : "";
    view.dataset.transform = JSON.stringify(r.transform);
  }

  async function fgsm() {
    if (!original) return;
    $("robust-fgsm-status").textContent = "searching…";
    try {
      const r = await P.postJSON("/api/robustness/fgsm", { image: original });
      const name = (i) => r.classes[i];
      $("robust-fgsm-result").hidden = !r.found;
      if (!r.found) {
        $("robust-fgsm-status").textContent = `no step up to ε = ${r.max_epsilon} changes the prediction ${name(r.predicted)}`;
        return;
      }
      P.gray($("fgsm-original"), original.flat(), 28, 28);
      const delta = r.perturbation.flat();
      P.pixels($("fgsm-delta"), 28, 28, (i) => P.diverging(delta[i], r.epsilon));
      P.gray($("fgsm-adversarial"), r.adversarial.image.flat(), 28, 28);
      $("fgsm-original-caption").textContent = `${name(r.predicted)} (${P.pct(r.probabilities[r.predicted], 1)})`;
      $("fgsm-delta-caption").textContent = `±${r.epsilon} grey levels on ${r.changed_pixels} pixels`;
      $("fgsm-adversarial-caption").textContent = `${name(r.adversarial.predicted)} (${P.pct(r.adversarial.probabilities[r.adversarial.predicted], 1)})`;
      $("robust-fgsm-status").textContent = `ε = ${r.epsilon} (${(100 * r.epsilon / 255).toFixed(1)}% of the grey range) turns ` +
        `${name(r.predicted)} into ${name(r.adversarial.predicted)}`;
      $("robust-fgsm-result").dataset.epsilon = r.epsilon;
    } catch (e) { $("robust-fgsm-status").textContent = e.message; }
  }

  function status(text, cls = "muted") { $("robust-status").textContent = text; $("robust-status").className = cls; }
  $("robust-take").addEventListener("click", take);
  $("robust-fgsm").addEventListener("click", fgsm);
  $("robust-reset").addEventListener("click", () => {
    for (const [k, , , , , v] of SLIDERS) $(`robust-${k}`).value = v;
    update();
  });
  for (const [k] of SLIDERS) $(`robust-${k}`).addEventListener("input", update);
})();
