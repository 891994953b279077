// cnnlab explorer, Runs: the runs in the server's folder; one run's curves, filters' history and
// clickable confusion matrix; two runs side by side.
"use strict";

(() => {
  const view = document.getElementById("runs-view");
  if (!view) return;
  const P = cnnlabPlots, el = P.el, $ = (id) => document.getElementById(id);
  view.classList.add("card");
  view.innerHTML = `
    <h2>Runs</h2>
    <p class="muted" id="runs-root"></p>
    <div class="runs-actions">
      <button id="runs-refresh" type="button" class="secondary">Refresh</button>
      <button id="runs-open" type="button" disabled>Open</button>
      <button id="runs-compare" type="button" disabled>Compare two</button>
      <span id="runs-status" class="muted" role="status"></span>
    </div>
    <div class="table-wrap"><table id="runs-table" class="runs-table">
      <thead><tr><th></th><th>run</th><th>model</th><th>dataset</th><th>recipe</th><th class="num">test accuracy</th>
        <th class="num">parameters</th><th class="num">training time</th><th class="num">epochs</th><th>state</th></tr></thead>
      <tbody></tbody></table></div>
    <div id="run-detail" hidden>
      <h3 id="run-title"></h3>
      <p id="run-summary" class="muted"></p>
      <div class="charts"><canvas id="run-loss" class="chart"></canvas><canvas id="run-acc" class="chart"></canvas></div>
      <h3>The filters' history</h3>
      <p class="muted">Slide through training: the first layer's filters from their random start to the end, each over
        the hand-designed kernel it resembles most and their cosine similarity (blue negative, red positive).</p>
      <div class="history-controls">
        <input type="range" id="history-slider" min="0" max="0" value="0" aria-label="snapshot">
        <span id="history-label" class="muted"></span>
      </div>
      <div id="history-filters" class="filters"></div>
      <canvas id="history-chart" class="chart short"></canvas>
      <h3>Confusion matrix <span class="muted">rows: true class, columns: predicted; click a cell to see its images</span></h3>
      <div class="confusion-row">
        <div class="table-wrap"><table id="confusion" class="confusion"></table></div>
        <div id="per-class" class="per-class"></div>
      </div>
      <div id="cell" hidden>
        <h4 id="cell-title"></h4>
        <div id="cell-images" class="images"></div>
      </div>
    </div>
    <div id="run-compare" hidden>
      <h3 id="compare-title"></h3>
      <p id="compare-summary" class="muted"></p>
      <div class="charts"><canvas id="compare-loss" class="chart"></canvas><canvas id="compare-acc" class="chart"></canvas></div>
      <h4>Accuracy per class</h4>
      <div id="compare-classes" class="per-class wide"></div>
      <h4 id="compare-ab-title"></h4><div id="compare-ab" class="images"></div>
      <h4 id="compare-ba-title"></h4><div id="compare-ba" class="images"></div>
    </div>`;

  const COLORS = ["#2563eb", "#ea580c"];
  let runs = [], chosen = [], history = null;

  // ---- the list -----------------------------------------------------------------------------
  async function load() {
    let r;
    try { r = await P.getJSON("/api/runs"); } catch (e) { return status(e.message, "error"); }
    runs = r.runs;
    $("runs-root").textContent = `${runs.length} run${runs.length === 1 ? "" : "s"} in ${r.root}`;
    chosen = chosen.filter((n) => runs.some((x) => x.name === n));
    const body = $("runs-table").tBodies[0];
    body.replaceChildren(...runs.map((x) => row(x, r)));
    buttons();
  }
  function row(x, r) {
    const box = el("input", { type: "checkbox", "aria-label": "choose " + x.name });
    box.checked = chosen.includes(x.name);
    box.addEventListener("change", () => {
      chosen = chosen.filter((n) => n !== x.name);
      if (box.checked) chosen.push(x.name);
      if (chosen.length > 2) chosen.shift();
      for (const b of $("runs-table").querySelectorAll("tbody input")) b.checked = chosen.includes(b.closest("tr").dataset.run);
      buttons();
    });
    const loaded = r.loaded && r.loaded.replace(/\/+$/, "").endsWith("/" + x.name);
    const state = r.training === x.name ? "training" : x.finished ? (loaded ? "in the explorer" : "") : x.resumable ? "stopped (resumable)" : "unfinished";
    const stateCell = el("td", { text: state });
    if (x.finished && !loaded) stateCell.append(el("button", { type: "button", class: "link", text: "Explore",
      title: "draw digits for this run's network in the explorer", onclick: () => explore(x.name) }));
    const tr = el("tr", { "data-run": x.name },
      el("td", {}, box), el("td", {}, el("button", { type: "button", class: "link", text: x.name, onclick: () => open(x.name) })),
      el("td", { text: x.model || "" }), el("td", { text: x.dataset || "" }), el("td", { text: x.recipe || "" }),
      el("td", { class: "num", text: P.pct(x.test_accuracy) }),
      el("td", { class: "num", text: x.parameters ? x.parameters.toLocaleString("en") : "–" }),
      el("td", { class: "num", text: P.seconds(x.train_seconds) }),
      el("td", { class: "num", text: x.epochs ? `${x.epochs_done}/${x.epochs}` : "–" }), stateCell);
    return tr;
  }
  function buttons() {
    $("runs-open").disabled = chosen.length !== 1;
    $("runs-compare").disabled = chosen.length !== 2;
  }
  function status(text, cls = "muted") { $("runs-status").textContent = text; $("runs-status").className = cls; }
  $("runs-refresh").addEventListener("click", load);
  $("runs-open").addEventListener("click", () => open(chosen[0]));
  $("runs-compare").addEventListener("click", () => compare(chosen[0], chosen[1]));

  async function explore(name) {
    try {
      await P.postJSON(`/api/runs/${encodeURIComponent(name)}/explore`);
      location.hash = "";
      location.reload();
    } catch (e) { status(e.message, "error"); }
  }

  // ---- one run ------------------------------------------------------------------------------
  async function open(name) {
    $("run-compare").hidden = true;
    $("run-detail").hidden = false;
    $("cell").hidden = true;
    view.dataset.open = "";
    const x = runs.find((r) => r.name === name) || { name };
    $("run-title").textContent = name;
    $("run-summary").textContent = [x.model, x.dataset, x.recipe && `recipe ${x.recipe}`,
      x.test_accuracy != null && `test accuracy ${P.pct(x.test_accuracy)}`,
      x.parameters && `${x.parameters.toLocaleString("en")} parameters`].filter(Boolean).join(" · ");
    status("loading " + name + "…");
    try {
      history = await P.getJSON(`/api/runs/${encodeURIComponent(name)}/history`);
      curves([history], ["#run-loss", "#run-acc"]);
      historySlider();
      $("run-detail").scrollIntoView({ block: "start" });
    } catch (e) { return status(e.message, "error"); }
    try {
      const ev = await P.getJSON(`/api/runs/${encodeURIComponent(name)}/evaluation`);
      confusion(name, ev);
      status("");
    } catch (e) { $("confusion").replaceChildren(); $("per-class").replaceChildren(); status(e.message, "error"); }
    view.dataset.open = name;
  }

  // Loss and test accuracy of one or two runs: per point, per snapshot and per epoch.
  function curves(histories, [lossId, accId]) {
    const loss = [], acc = [], two = histories.length > 1;
    let xMax = 1;
    histories.forEach((h, i) => {
      const spe = h.steps_per_epoch, c = two ? COLORS[i] : "#2563eb", name = two ? `${"AB"[i]}: ` : "";
      const x = (e) => (spe ? e.step / spe : e.epoch);
      xMax = Math.max(xMax, h.epochs_planned || 0, ...h.epochs.map((e) => e.epoch));
      if (h.points.length) {
        if (!two) loss.push({ points: h.points.map((p) => [x(p), p.loss]), color: "#c7d2fe", width: 1 });
        loss.push({ points: P.smooth(h.points.map((p) => [x(p), p.loss])), color: c, width: 2, label: name + "loss (smoothed)" });
      }
      // An epoch's mean loss is drawn mid-epoch: it averages the whole epoch, not its end.
      loss.push({ points: h.epochs.map((e) => [e.epoch - 0.5, e.mean_loss]), color: two ? c : "#111827", dots: 4,
                  dotsOnly: h.points.length > 0, label: h.points.length ? (two ? "" : "epoch mean") : name + "epoch mean loss" });
      acc.push({ points: h.snapshots.map((s) => [x(s), s.test_accuracy]), color: two ? c : "#059669", width: 2, dots: 2,
                 label: name + "test accuracy" });
      acc.push({ points: h.epochs.map((e) => [e.epoch, e.test_accuracy]), color: two ? c : "#111827", dots: 4, dotsOnly: true });
    });
    const xOpts = { xMin: 0, xMax, xLabel: "epochs" };
    P.lineChart(document.querySelector(lossId), loss, { ...xOpts, title: "training loss", yMin: 0 });
    P.lineChart(document.querySelector(accId), acc, { ...xOpts, title: "test accuracy", yMin: 0, yMax: 1,
      yFormat: (y) => (100 * y).toFixed(y > 0.9 ? 1 : 0) + "%" });
  }

  function historySlider() {
    const slider = $("history-slider"), snaps = history.snapshots;
    slider.max = Math.max(0, snaps.length - 1);
    slider.value = slider.max;
    slider.disabled = snaps.length < 2;
    showSnapshot();
  }
  function showSnapshot() {
    const snaps = history.snapshots, i = Number($("history-slider").value), s = snaps[i];
    if (!s) {
      $("history-label").textContent = "this run has no history of its filters (it was trained before cnnlab kept one)";
      $("history-filters").replaceChildren();
      return;
    }
    P.filterGrid($("history-filters"), s.filters, s.matches, history.kernels);
    $("history-filters").dataset.index = i;
    $("history-label").textContent = `snapshot ${i + 1}/${snaps.length}: ` +
      (s.step ? `epoch ${s.epoch}, step ${s.step}` : "before training") +
      ` · test accuracy ${P.pct(s.test_accuracy, 1)}` +
      (s.mean_similarity != null ? ` · mean similarity to the closest kernel ${s.mean_similarity.toFixed(3)}` : "");
    const spe = history.steps_per_epoch || 1, x = (q) => q.step / spe;
    const { X } = P.lineChart($("history-chart"), [
      { points: snaps.map((q) => [x(q), q.mean_similarity]), color: "#7c3aed", width: 2, dots: 2, label: "mean similarity" },
      { points: snaps.map((q) => [x(q), q.test_accuracy]), color: "#059669", width: 1.5, dash: [4, 3], label: "test accuracy" },
    ], { xMin: 0, xMax: Math.max(1, x(snaps[snaps.length - 1])), yMin: 0, yMax: 1, xLabel: "epochs" });
    const c = $("history-chart").getContext("2d");          // where the slider is
    c.strokeStyle = "#1d2430"; c.setLineDash([2, 2]);
    c.beginPath(); c.moveTo(X(x(s)), 16); c.lineTo(X(x(s)), $("history-chart").clientHeight - 28); c.stroke();
    c.setLineDash([]);
  }
  $("history-slider").addEventListener("input", showSnapshot);

  function confusion(name, ev) {
    const k = ev.classes.length, cm = ev.confusion_matrix, table = $("confusion");
    const head = el("tr", {}, el("th", { text: "" }), ...ev.classes.map((c) => el("th", { text: short(c) })));
    const rows = cm.map((r, t) => {
      const total = r.reduce((a, b) => a + b, 0) || 1;
      return el("tr", {}, el("th", { text: short(ev.classes[t]) }), ...r.map((n, p) => {
        const share = n / total, cellButton = el("button", { type: "button", "data-true": t, "data-predicted": p,
          title: `${n} test images of ${ev.classes[t]} predicted as ${ev.classes[p]}`, text: n ? String(n) : "" });
        cellButton.disabled = n === 0;
        cellButton.addEventListener("click", () => openCell(name, ev, t, p));
        const td = el("td", { class: t === p ? "diag" : n ? "off" : "" }, cellButton);
        td.style.background = t === p ? `rgba(37, 99, 235, ${0.1 + 0.6 * share})` : n ? `rgba(234, 88, 12, ${0.12 + 0.88 * Math.min(1, share * 8)})` : "";
        return td;
      }));
    });
    table.replaceChildren(head, ...rows);
    perClass($("per-class"), ev.classes, [ev.per_class_accuracy], [`${P.pct(ev.accuracy)} on ${ev.test_images.toLocaleString("en")} ${ev.dataset} test images`]);
  }
  const short = (c) => (String(c).length > 6 ? String(c).slice(0, 5) + "…" : String(c));

  async function openCell(name, ev, t, p) {
    $("cell").hidden = false;
    $("cell-title").textContent = `true ${ev.classes[t]}, predicted ${ev.classes[p]}: loading…`;
    try {
      const c = await P.getJSON(`/api/runs/${encodeURIComponent(name)}/cell?true=${t}&predicted=${p}`);
      $("cell-title").textContent = `true ${ev.classes[t]}, predicted ${ev.classes[p]}: ${c.count} test image${c.count === 1 ? "" : "s"}` +
        (c.count > c.images.length ? `, the ${c.images.length} most confident shown` : "") + ` · overlay: ${c.explanation} for "${ev.classes[p]}"`;
      const [h, w] = c.size;
      $("cell-images").replaceChildren(...c.images.map((im) => el("figure", { class: "shot", "data-index": im.index },
        P.gray(P.pixelCanvas(), im.image, w, h), P.overlay(P.pixelCanvas(), im.image, im.heat, w, h),
        el("figcaption", { text: `#${im.index}: p(${ev.classes[p]}) ${P.pct(im.probabilities[p], 1)}` +
          (t !== p ? `, p(${ev.classes[t]}) ${P.pct(im.probabilities[t], 1)}` : "") }))));
      $("cell").dataset.cell = `${t},${p}`;
      $("cell").scrollIntoView({ block: "nearest" });
    } catch (e) { $("cell-title").textContent = e.message; }
  }

  function perClass(box, classes, series, captions) {
    box.replaceChildren(el("div", { class: "muted", text: "accuracy per class" }));
    captions.forEach((cap, i) => box.append(el("div", { class: "legend" },
      el("span", { class: "swatch" }), el("span", { text: cap }))));
    box.querySelectorAll(".swatch").forEach((s, i) => { s.style.background = series.length > 1 ? COLORS[i] : "#2563eb"; });
    classes.forEach((c, k) => {
      const bars = series.map((s, i) => {
        const f = el("span", { class: "fill" });
        f.style.width = (100 * (s[k] ?? 0)).toFixed(1) + "%";
        f.style.background = series.length > 1 ? COLORS[i] : "#2563eb";
        return el("span", { class: "track", title: P.pct(s[k]) }, f);
      });
      box.append(el("div", { class: "pc" }, el("span", { class: "name", text: c }), el("span", { class: "bars" }, ...bars),
        el("span", { class: "pct", text: series.map((s) => P.pct(s[k], 1)).join(" / ") })));
    });
  }

  // ---- two runs ---------------------------------------------------------------------------------
  async function compare(a, b) {
    $("run-detail").hidden = true;
    $("run-compare").hidden = false;
    $("compare-title").textContent = `A: ${a}  ·  B: ${b}`;
    status("comparing…");
    try {
      const [c, ha, hb] = await Promise.all([P.getJSON(`/api/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`),
        P.getJSON(`/api/runs/${encodeURIComponent(a)}/history`), P.getJSON(`/api/runs/${encodeURIComponent(b)}/history`)]);
      curves([ha, hb], ["#compare-loss", "#compare-acc"]);
      $("compare-summary").textContent = `on the same ${c.test_images.toLocaleString("en")} test images: A ${P.pct(c.accuracy[0])}, ` +
        `B ${P.pct(c.accuracy[1])}; both wrong on ${c.both_wrong}`;
      perClass($("compare-classes"), c.classes, c.per_class_accuracy, ["A: " + a, "B: " + b]);
      differences("ab", c.a_right_b_wrong, "A gets right and B gets wrong", c.classes);
      differences("ba", c.b_right_a_wrong, "B gets right and A gets wrong", c.classes);
      status("");
      view.dataset.compared = `${a},${b}`;
      $("run-compare").scrollIntoView({ block: "start" });
    } catch (e) { status(e.message, "error"); }
  }
  function differences(id, d, what, classes) {
    $(`compare-${id}-title`).textContent = `${d.count} image${d.count === 1 ? "" : "s"} ${what}` +
      (d.count > d.images.length ? ` (the first ${d.images.length})` : "");
    $(`compare-${id}`).replaceChildren(...d.images.map((im) => el("figure", { class: "shot", "data-index": im.index },
      P.gray(P.pixelCanvas(), im.image, 28, 28),
      el("figcaption", { text: `#${im.index} true ${classes[im.true]}: A ${classes[im.a.predicted]}, B ${classes[im.b.predicted]}` }))));
  }

  document.addEventListener("cnnlab:open-run", async (e) => {
    await load();
    location.hash = "#runs";  // the Runs tab (app.js shows the view the address names)
    open(e.detail.run);
  });
  load();
})();
