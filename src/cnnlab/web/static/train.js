// cnnlab explorer, Train: start a training on the server, watch its loss, accuracy and first-layer
// filters live (server-sent events from the run's history.jsonl), stop it with a checkpoint.
"use strict";

(() => {
  const view = document.getElementById("train-view");
  if (!view) return;
  const P = cnnlabPlots, $ = (id) => document.getElementById(id);
  view.classList.add("card");
  view.innerHTML = `
    <h2>Train a network</h2>
    <p class="muted">The server runs <code>cnnlab train</code> for you: the same engine and the same run folder as the
      terminal, resumable and ready for the run browser. One training at a time; Stop keeps a checkpoint.</p>
    <form id="train-form" class="train-form">
      <label>Recipe <select id="train-recipe" name="recipe"></select></label>
      <label>Model <select id="train-model" name="model"></select></label>
      <label>Dataset <select id="train-dataset" name="dataset"></select></label>
      <label>Epochs <input id="train-epochs" name="epochs" type="number" min="1" max="10000" value="2"></label>
      <label>Training images <input id="train-limit" name="limit_train" type="number" min="1" value="10000"></label>
      <label>Test images <input id="train-limit-test" name="limit_test" type="number" min="1" placeholder="all"></label>
      <label>Snapshots per epoch <input id="train-snapshots" name="snapshots" type="number" min="1" max="1000" value="10"></label>
      <div class="train-buttons">
        <button id="train-start" type="submit">Start</button>
        <button id="train-stop" type="button" class="secondary" disabled>Stop</button>
      </div>
    </form>
    <p id="train-status" class="muted" role="status" data-state="idle"></p>
    <div class="train-progress"><span id="train-bar"></span></div>
    <p id="train-numbers" class="muted numbers"></p>
    <div class="charts">
      <canvas id="train-loss" class="chart" aria-label="training loss"></canvas>
      <canvas id="train-acc" class="chart" aria-label="test accuracy"></canvas>
    </div>
    <h3>First-layer filters, live <span id="train-filters-note" class="muted"></span></h3>
    <div id="train-filters" class="filters"></div>`;

  let options = null, source = null, drawPending = false;
  let run = fresh();
  function fresh() {
    return { name: null, stepsPerEpoch: null, epochs: null, points: [], epochEnds: [], snapshots: [], updates: 0, resumedAt: [] };
  }

  // ---- the form ---------------------------------------------------------------------------------
  async function init() {
    try { options = await P.getJSON("/api/train"); } catch (e) { return say("cannot reach the server: " + e.message, "error"); }
    const fill = (sel, items) => { sel.replaceChildren(...items.map(([v, t]) => new Option(t, v))); };
    fill($("train-recipe"), Object.keys(options.recipes).map((r) => [r, r]));
    fill($("train-model"), Object.entries(options.models).map(([m, d]) => [m, m]));
    [...$("train-model").options].forEach((o) => { o.title = options.models[o.value]; });
    fill($("train-dataset"), options.datasets.map((d) => [d, d]));
    recipeChosen();
    if (!options.allowed) {
      [...$("train-form").elements].forEach((e) => { e.disabled = true; });
      say(options.reason, "error");
    }
    if (options.job) follow(options.job);
  }
  // A recipe made for one dataset (fashion) picks it; the next recipe puts MNIST back, unless
  // the user chose another dataset since.
  let recipeDataset = null;
  function recipeChosen() {
    const r = options.recipes[$("train-recipe").value], dataset = $("train-dataset");
    $("train-model").value = r.model;
    $("train-epochs").value = Math.min(r.epochs, 5);
    if (r.dataset && options.datasets.includes(r.dataset)) {
      dataset.value = recipeDataset = r.dataset;
    } else if (recipeDataset && dataset.value === recipeDataset && options.datasets.includes("mnist")) {
      dataset.value = "mnist";
      recipeDataset = null;
    }
  }
  $("train-recipe").addEventListener("change", recipeChosen);

  function settings() {
    const out = {};
    for (const e of $("train-form").elements) {
      if (!e.name || e.value === "") continue;
      out[e.name] = e.type === "number" ? Number(e.value) : e.value;
    }
    return out;
  }
  $("train-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("train-start").disabled = true;
    try {
      const job = await P.postJSON("/api/train", settings());
      follow(job);
    } catch (e) {
      say("not started: " + e.message, "error");
      $("train-start").disabled = !options.allowed;
    }
  });
  $("train-stop").addEventListener("click", async () => {
    $("train-stop").disabled = true;
    try { showStatus(await P.postJSON("/api/train/stop")); } catch (e) { say(e.message, "error"); }
  });

  // ---- following a training ---------------------------------------------------------------------
  // The form shows what the followed training was started with (a page opened later, too).
  function showSettings(given) {
    if (!given || !options) return;
    const recipe = options.recipes[given.recipe] || {};   // what a setting left out was
    const unset = { recipe: given.recipe, model: recipe.model, dataset: recipe.dataset || "mnist", epochs: recipe.epochs,
                    limit_train: "", limit_test: "", snapshots: 1 };
    for (const e of $("train-form").elements) if (e.name) e.value = given[e.name] ?? unset[e.name] ?? e.value;
  }

  function follow(job) {
    if (source) source.close();
    showSettings(job.settings);
    run = fresh();
    run.name = job.run;
    view.dataset.run = job.run;
    showStatus(job);
    scheduleDraw();
    source = new EventSource("/api/train/events");
    source.addEventListener("history", (m) => took(JSON.parse(m.data).events));
    source.addEventListener("status", (m) => {
      const s = JSON.parse(m.data);
      showStatus(s);
      if (!["running", "stopping"].includes(s.state)) { source.close(); source = null; }
    });
  }

  function took(events) {
    let news = false;
    for (const e of events) {
      const x = run.stepsPerEpoch ? e.step / run.stepsPerEpoch : e.step;
      if (e.kind === "start") { run.stepsPerEpoch = e.steps_per_epoch; run.epochs = e.epochs; run.total = e.train_images; }
      else if (e.kind === "step") { run.points.push({ ...e, x }); news = true; }
      else if (e.kind === "epoch") { run.epochEnds.push({ ...e, x }); news = true; }
      else if (e.kind === "snapshot") { run.snapshots.push({ ...e, x }); news = true; }
      else if (e.kind === "resume") run.resumedAt.push(x);
    }
    if (news) view.dataset.updates = ++run.updates;
    scheduleDraw();
  }

  function scheduleDraw() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => { drawPending = false; draw(); });
  }

  function draw() {
    const last = run.points[run.points.length - 1], epochs = run.epochs || 1;
    const xOpts = { xMin: 0, xMax: epochs, xLabel: "epochs", xFormat: (x) => String(+x.toFixed(2)) };
    P.lineChart($("train-loss"), [
      { points: run.points.map((p) => [p.x, p.loss]), color: "#c7d2fe", width: 1, label: "loss (per point)" },
      { points: P.smooth(run.points.map((p) => [p.x, p.loss])), color: "#2563eb", width: 2, label: "smoothed" },
      { points: run.epochEnds.map((e) => [e.epoch - 0.5, e.mean_loss]), color: "#111827", dots: 4, dotsOnly: true, label: "epoch mean" },
    ], { ...xOpts, title: "training loss", yMin: 0 });
    P.lineChart($("train-acc"), [
      { points: run.snapshots.map((s) => [s.x, s.test_accuracy]), color: "#059669", width: 2, dots: 2.5, label: "test accuracy" },
      { points: run.epochEnds.map((e) => [e.x, e.test_accuracy]), color: "#111827", dots: 4, dotsOnly: true, label: "epoch end" },
    ], { ...xOpts, title: "test accuracy", yMin: 0, yMax: 1, yFormat: (y) => Math.round(100 * y) + "%" });
    const bar = $("train-bar");
    bar.style.width = last && run.stepsPerEpoch ? Math.min(100, 100 * last.step / (run.stepsPerEpoch * epochs)).toFixed(1) + "%" : "0";
    if (last) {
      const acc = run.snapshots.length ? run.snapshots[run.snapshots.length - 1] : null;
      $("train-numbers").textContent = `epoch ${last.epoch}/${epochs}, step ${last.step}/${run.stepsPerEpoch * epochs}` +
        ` · loss ${last.loss.toFixed(4)} · ${Math.round(last.images_per_second).toLocaleString("en")} images/s` +
        (acc ? ` · test accuracy ${P.pct(acc.test_accuracy, 1)} (on ${acc.test_images.toLocaleString("en")} images)` : "") +
        ` · ${run.updates} live updates`;
    }
    drawFilters(run.snapshots[run.snapshots.length - 1]);
  }

  function drawFilters(s) {
    if (!s) { $("train-filters").replaceChildren(); return; }
    if (!s.layer) { $("train-filters-note").textContent = "(this model has no convolution layer)"; return; }
    const [n, cin, kh, kw] = s.shape, filters = [];
    for (let f = 0; f < n; f++) {             // the mean over input channels, as the run browser shows them
      const rows = [];
      for (let y = 0; y < kh; y++) {
        const row = [];
        for (let x = 0; x < kw; x++) {
          let v = 0;
          for (let c = 0; c < cin; c++) v += s.weights[((f * cin + c) * kh + y) * kw + x];
          row.push(v / cin);
        }
        rows.push(row);
      }
      filters.push(rows);
    }
    P.filterGrid($("train-filters"), filters);
    $("train-filters").dataset.step = s.step;
    $("train-filters-note").textContent = `(${s.layer}, ${n} filters of ${kh}×${kw}, at epoch ${s.epoch}, step ${s.step}` +
      (s.trained ? ")" : "; this layer is computed from the data, not trained)");
  }

  function showStatus(s) {
    const status = $("train-status");
    status.dataset.state = s.state;
    const running = s.state === "running" || s.state === "stopping";
    $("train-start").disabled = running || !options || !options.allowed;
    $("train-stop").disabled = s.state !== "running";
    const words = {
      running: `training ${s.run}…`, stopping: `stopping ${s.run}: writing its checkpoint…`,
      finished: `finished ${s.run} in ${P.seconds(s.seconds)}: test accuracy ${P.pct(s.test_accuracy)}`,
      stopped: `stopped ${s.run} with a checkpoint. Resume it in a terminal: ${s.resume}`,
      failed: `training failed: ${s.message}`, idle: "",
    };
    say(words[s.state] ?? s.state, s.state === "failed" ? "error" : "muted");
    if (!running && s.run && s.state !== "failed") {
      status.append(" ", P.el("button", { type: "button", class: "link", id: "train-open-run", text: "Open in the run browser",
        onclick: () => document.dispatchEvent(new CustomEvent("cnnlab:open-run", { detail: { run: s.run } })) }));
    }
  }
  function say(text, cls = "muted") {
    const status = $("train-status");
    status.className = cls;
    status.textContent = text;
  }

  window.addEventListener("resize", scheduleDraw);
  init();
})();
