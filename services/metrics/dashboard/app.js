// Vigil's dashboard: named queries of the metrics API drawn with uPlot, and the newest frame of a chosen
// camera with the boxes of its latest result. Everything comes from this server; nothing from the internet.
"use strict";

const REFRESH_MS = 5000;
const COLOURS = ["#1a73e8", "#e8710a", "#188038", "#d93025", "#9334e6", "#12b5cb", "#f9ab00", "#5f6368"];
const charts = {};
// ?camera=ID opens the dashboard on that camera; otherwise the first online camera is shown.
let selectedCamera = new URLSearchParams(window.location.search).get("camera");

// The window every query of one refresh uses: [since, until).
let window_ = null;

function nextWindow() {
  const minutes = Number(document.getElementById("window").value);
  const until = new Date();
  window_ = {since: new Date(until.getTime() - minutes * 60000), until};
}

async function named(name, parameters = {}) {
  const {since, until} = window_;
  const response = await fetch("/api/query", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({named: name, parameters: {since: since.toISOString(), until: until.toISOString(), ...parameters}}),
  });
  const payload = await response.json();
  if (!response.ok) throw new Error(`${name}: ${payload.error}`);
  return payload.rows.map(row => Object.fromEntries(payload.columns.map((c, i) => [c, row[i]])));
}

const seconds = isoTime => Date.parse(isoTime.endsWith("Z") || isoTime.includes("+") ? isoTime : isoTime + "Z") / 1000;

// Rows of (x, series, value) as uPlot's aligned arrays: one x axis, one array per series (null where absent).
function pivot(rows, xKey, seriesKey, valueKey) {
  const xs = [...new Set(rows.map(r => seconds(r[xKey])))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const series = new Map();
  for (const r of rows) {
    const name = typeof seriesKey === "function" ? seriesKey(r) : r[seriesKey];
    if (!series.has(name)) series.set(name, new Array(xs.length).fill(null));
    series.get(name)[index.get(seconds(r[xKey]))] = r[valueKey];
  }
  return {xs, series};
}

function draw(id, {xs, series}, options = {}) {
  const element = document.getElementById(id);
  const names = [...series.keys()];
  const data = [xs, ...names.map(n => series.get(n))];
  const signature = names.join("\u0000");
  // The x axis spans the chosen window, or the span a chart asks for (options.span: {since, until}).
  const span = options.span || window_;
  const existing = charts[id];
  if (existing && existing.signature === signature) {
    existing.span = span;
    existing.plot.setData(data);
  } else {
    if (existing) existing.plot.destroy();
    const chart = {signature, span};
    chart.plot = new uPlot({
      width: Math.max(element.clientWidth, 480), height: 220,
      series: [{}, ...names.map((n, i) => ({label: String(n), stroke: COLOURS[i % COLOURS.length], width: 2,
                                             points: {show: xs.length < 30}, spanGaps: false,
                                             ...(options.bars ? {paths: uPlot.paths.bars({size: [0.6, 40]}),
                                                                 fill: COLOURS[i % COLOURS.length] + "55"} : {})}))],
      // The x axis spans the whole window, so that one minute of data is a point in it, not the whole chart.
      scales: {x: {time: true, range: () => [chart.span.since.getTime() / 1000, chart.span.until.getTime() / 1000]},
               ...(options.yRange ? {y: {range: () => options.yRange}} : {})},
      axes: [{}, {label: options.unit || ""}],
    }, data, element);
    charts[id] = chart;
  }
  element.dataset.points = String(names.reduce((n, name) => n + series.get(name).filter(v => v !== null).length, 0));
  element.dataset.series = String(names.length);
}

async function refreshCameras() {
  const cameras = await named("cameras");
  const body = document.querySelector("#cameras tbody");
  body.replaceChildren(...cameras.map(c => {
    const row = document.createElement("tr");
    row.dataset.camera = c.camera_id;
    if (c.camera_id === selectedCamera) row.classList.add("selected");
    const lastResult = c.last_result && !c.last_result.startsWith("1970") ? c.last_result.replace("T", " ").slice(0, 19) : "";
    for (const [text, cls] of [[c.camera_id], [c.state, `state-${c.state}`], [c.fps.toFixed(2)],
                               [c.fps_produced.toFixed(2)], [lastResult]]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (cls) cell.className = cls;
      row.append(cell);
    }
    row.addEventListener("click", () => { selectedCamera = c.camera_id; refreshAll(); });
    return row;
  }));
  if (!selectedCamera && cameras.length) {
    selectedCamera = (cameras.find(c => c.state === "online") || cameras[0]).camera_id;
  }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("no frame"));
    image.src = url;
  });
}

async function refreshLive() {
  const canvas = document.getElementById("live");
  const caption = document.getElementById("live-caption");
  document.getElementById("live-camera").textContent = selectedCamera || "no camera";
  if (!selectedCamera) return;
  const [latest] = await named("recent_detections", {camera_id: selectedCamera, limit: 1});
  let image = null;
  try {
    // The frame the result was computed on, if the server still holds it; else the camera's newest.
    const frame = latest ? `&frame_event_id=${encodeURIComponent(latest.frame_event_id)}` : "";
    image = await loadImage(`/api/frames/${encodeURIComponent(selectedCamera)}.jpg?t=${Date.now()}${frame}`);
  } catch (_) { /* no frame held: boxes on a blank frame */ }
  const width = image ? image.naturalWidth : (latest ? latest.width : 768);
  const height = image ? image.naturalHeight : (latest ? latest.height : 576);
  canvas.width = width; canvas.height = height;
  const context = canvas.getContext("2d");
  context.fillStyle = "#222"; context.fillRect(0, 0, width, height);
  if (image) context.drawImage(image, 0, 0);
  let boxes = 0;
  if (latest) {
    // Boxes are in the pixels of the frame the model saw; scale if the held frame differs in size.
    const sx = width / (latest.width || width), sy = height / (latest.height || height);
    context.lineWidth = 2; context.font = "14px system-ui"; context.textBaseline = "bottom";
    latest.boxes.forEach(([x1, y1, x2, y2], i) => {
      const colour = COLOURS[i % COLOURS.length];
      context.strokeStyle = colour; context.fillStyle = colour;
      context.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
      context.fillText(`${latest.labels[i]} ${(latest.scores[i] * 100).toFixed(0)}%`, x1 * sx + 2, y1 * sy);
      boxes += 1;
    });
    caption.textContent = `result of ${latest.event_time.replace("T", " ").slice(0, 23)}: ${boxes} detections` +
      (image ? "" : " (no frame held for this camera)");
  } else {
    caption.textContent = "no result in the window";
  }
  canvas.dataset.boxes = String(boxes);
  canvas.dataset.frame = image ? "1" : "0";
}

async function refreshCharts() {
  const [throughput, latency, classes, deadLetters] = await Promise.all([
    named("throughput"), named("latency_over_time", {stage: "total"}), named("detections_per_class"),
    named("dead_letter_rate"),
  ]);
  draw("throughput", pivot(throughput, "minute", "camera_id", "fps"), {unit: "results/s"});
  const latencyRows = latency.flatMap(r => [["p50", r.p50_ms], ["p95", r.p95_ms], ["p99", r.p99_ms]]
    .map(([q, v]) => ({minute: r.minute, series: `${r.model_name} ${q}`, value: v})));
  draw("latency", pivot(latencyRows, "minute", "series", "value"), {unit: "ms"});
  draw("classes", pivot(classes, "minute", "label", "detections"), {unit: "detections", bars: true});
  draw("dead-letters", pivot(deadLetters, "minute", r => `${r.origin_topic} ${r.reason}`, "letters"),
       {unit: "letters", bars: true});
  const total = deadLetters.reduce((n, r) => n + r.letters, 0);
  document.getElementById("dead-letters-total").textContent = `${total} dead letters in the window`;
}

async function refreshSensorAnomalies() {
  const anomalies = await named("sensor_anomalies", {limit: 20});
  const table = document.getElementById("sensor-anomalies");
  table.querySelector("tbody").replaceChildren(...anomalies.map(a => tableRow(
    [a.event_time.replace("T", " ").slice(0, 19), a.sensor_id, a.quantity, `${a.value} ${a.unit}`,
     `${a.score.toFixed(1)} / ${a.threshold.toFixed(1)}`],
    {sensor: a.sensor_id})));
  table.dataset.rows = String(anomalies.length);
  document.getElementById("sensor-anomalies-caption").textContent =
    anomalies.length ? `the ${anomalies.length} newest in the window` : "no sensor reading flagged in the window";
}

function tableRow(cells, data = {}) {
  const row = document.createElement("tr");
  Object.assign(row.dataset, data);
  for (const text of cells) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.append(cell);
  }
  return row;
}

// The registry's stage changes, whatever the chosen window (the query's own default: ten years), and the
// primary version of each model: its newest "primary" announcement (a rollback announces one too).
async function refreshModels() {
  const history = await named("model_versions", {since: "", until: "", limit: 200});
  const primary = new Map();
  for (const v of history) {
    if (v.stage === "primary" && !primary.has(v.model_name)) primary.set(v.model_name, v);
  }
  document.getElementById("primary-models").textContent = primary.size
    ? "primary: " + [...primary.values()].map(v => `${v.model_name} ${v.model_version} (${v.model_precision})`).join(", ")
    : "no model promoted through the registry yet";
  const table = document.getElementById("model-versions");
  const newest = history.slice(0, 10);
  table.querySelector("tbody").replaceChildren(...newest.map(v => tableRow(
    [v.event_time.replace("T", " ").slice(0, 19), v.model_name, v.model_version, v.model_precision, v.stage,
     [v.action, v.announced_by].filter(Boolean).join(", ")],
    {model: v.model_name, version: v.model_version})));
  table.dataset.rows = String(newest.length);
}

// Drift: the open alerts and the newest window of each subject whatever the chosen window (the queries' own
// defaults), and per subject the highest score/threshold of each window in the chosen one.
async function refreshDrift() {
  const [alerts, latest, scores] = await Promise.all([
    named("drift_alerts_open", {since: "", until: ""}), named("drift_windows_latest", {since: "", until: ""}),
    named("drift_scores"),
  ]);
  const alertTable = document.getElementById("drift-alerts");
  alertTable.querySelector("tbody").replaceChildren(...alerts.map(a => tableRow(
    [a.raised_time.replace("T", " ").slice(0, 19), a.subject, String(a.windows),
     a.top_features.map((f, i) => `${f} ${a.top_metrics[i]} ${a.top_scores[i].toFixed(3)} / ${a.top_thresholds[i].toFixed(3)}`)
       .join(", ")],
    {subject: a.subject})));
  alertTable.dataset.rows = String(alerts.length);
  document.getElementById("drift-alerts-caption").textContent =
    alerts.length ? `${alerts.length} open drift alert(s)` : "no open drift alert";
  const worst = new Map();
  for (const r of scores) {
    const key = `${r.subject}\u0000${r.event_time}`;
    const ratio = r.threshold > 0 ? r.score / r.threshold : 0;
    if (!worst.has(key) || worst.get(key).ratio < ratio) worst.set(key, {subject: r.subject, time: r.event_time, ratio});
  }
  draw("drift-scores", pivot([...worst.values()], "time", "subject", "ratio"), {unit: "score / threshold"});
  const subjects = document.getElementById("drift-subjects");
  subjects.querySelector("tbody").replaceChildren(...latest.map(w => {
    const row = tableRow([w.subject, w.window_end.replace("T", " ").slice(0, 19), String(w.count), w.status,
                          w.alert_state, w.drifted_features.join(", ")], {subject: w.subject});
    row.cells[4].className = `drift-${w.alert_state}`;
    return row;
  }));
  subjects.dataset.rows = String(latest.length);
}

// Annotation: the whole queue by camera and state whatever the chosen window (the query's own default), labels
// per hour over the last day and the agreement of double-labelled tasks over the last week.
const ANNOTATION_STATES = ["open", "leased", "submitted", "accepted", "rejected"];

async function refreshAnnotation() {
  const day = {since: new Date(window_.until.getTime() - 86400000), until: window_.until};
  const week = {since: new Date(window_.until.getTime() - 7 * 86400000), until: window_.until};
  const iso = span => ({since: span.since.toISOString(), until: span.until.toISOString()});
  const [queue, labels, agreement] = await Promise.all([
    named("annotation_queue", {since: "", until: ""}), named("annotation_labels_per_hour", iso(day)),
    named("annotation_agreement", iso(week)),
  ]);
  const cameras = new Map();
  for (const r of queue) {
    if (!cameras.has(r.camera_id)) cameras.set(r.camera_id, {});
    cameras.get(r.camera_id)[r.state] = r.tasks;
  }
  const table = document.getElementById("annotation-queue");
  table.querySelector("tbody").replaceChildren(...[...cameras].map(([camera, states]) => tableRow(
    [camera, ...ANNOTATION_STATES.map(state => String(states[state] || 0))], {camera})));
  table.dataset.rows = String(cameras.size);
  const waiting = queue.filter(r => ["open", "leased", "submitted"].includes(r.state)).reduce((n, r) => n + r.tasks, 0);
  const total = queue.reduce((n, r) => n + r.tasks, 0);
  const caption = document.getElementById("annotation-queue-caption");
  caption.textContent = total ? `${waiting} of ${total} tasks waiting (open, leased or submitted)` : "no annotation task yet";
  caption.dataset.waiting = String(waiting);
  const labelRows = labels.flatMap(r => ["submissions", "reviews", "accepted", "rejected"]
    .map(series => ({hour: r.hour, series, value: r[series]})));
  draw("annotation-labels", pivot(labelRows, "hour", "series", "value"), {unit: "per hour", span: day});
  const agreementRows = agreement.flatMap(r => [{hour: r.hour, series: "mean", value: r.mean_agreement},
                                                {hour: r.hour, series: "lowest", value: r.min_agreement}]);
  draw("annotation-agreement", pivot(agreementRows, "hour", "series", "value"), {unit: "F1", span: week, yRange: [0, 1]});
}

// Datasets, whatever the chosen window (the queries' own default: ten years): each dataset's newest version (the last
// of dataset_versions, oldest first per dataset) with its counts, and the audit trail's newest events.
async function refreshDatasets() {
  const [versions, events] = await Promise.all([
    named("dataset_versions", {since: "", until: ""}), named("dataset_events", {since: "", until: "", limit: 10}),
  ]);
  const newest = new Map(versions.map(v => [v.dataset, v]));
  const time = t => t.replace("T", " ").slice(0, 19);
  const latest = document.getElementById("dataset-latest");
  latest.querySelector("tbody").replaceChildren(...[...newest.values()].map(v => tableRow(
    [v.dataset, v.version.slice(0, 12), String(v.item_count), String(v.boxes),
     ["train", "val", "test"].map(split => String(v.statistics[`split.${split}`] || 0)).join(" / "), time(v.event_time),
     v.actor],
    {dataset: v.dataset, version: v.version})));
  latest.dataset.rows = String(newest.size);
  const trail = document.getElementById("dataset-events");
  trail.querySelector("tbody").replaceChildren(...events.map(e => tableRow(
    [time(e.event_time), e.dataset || "(all)", e.action, e.version.slice(0, 12), e.actor, e.tag || e.message],
    {dataset: e.dataset, action: e.action})));
  trail.dataset.rows = String(events.length);
}

// The loop, whatever the chosen window (the queries' own default: ten years): the newest training runs with their
// progress and the gate's figures, each candidate's rollout (its stages in order, why its last step was taken),
// and the newest rollout steps with the checks measured over the stage each one ended.
function runProgress(r) {
  if (r.state === "started") return "started";
  const eta = r.eta_s === null ? "" : `, ~${Math.round(r.eta_s)} s left`;
  const step = r.step ? `${r.step} ${r.done}/${r.total}` : "";
  const elapsed = `${Math.round(r.elapsed_s)} s in`;
  return r.state === "progress" ? `${step}${eta} (${elapsed})` : `${step ? step + ", " : ""}${elapsed}`;
}

const mapFigure = value => value === null ? "–" : value.toFixed(3);
const stageName = stage => stage.replace("_", " ");

async function refreshLoop() {
  const [runs, rollouts, steps] = await Promise.all([
    named("training_runs", {since: "", until: "", limit: 10}), named("rollouts", {since: "", until: "", limit: 10}),
    named("rollout_steps", {since: "", until: "", limit: 10}),
  ]);
  const time = t => t.replace("T", " ").slice(0, 19);
  const runTable = document.getElementById("training-runs");
  runTable.querySelector("tbody").replaceChildren(...runs.map(r => {
    const candidate = r.candidate_version ? ` (v${r.candidate_version} vs ${r.champion_version ? "v" + r.champion_version : "default"})` : "";
    const row = tableRow(
      [time(r.started_time), `${r.dataset}@${r.dataset_version.slice(0, 12)}`, r.base_model, r.state, runProgress(r),
       `${mapFigure(r.candidate_map50)} / ${mapFigure(r.champion_map50)}${candidate}`, r.reasons.join("; ")],
      {run: r.run_id, state: r.state, dataset: r.dataset});
    row.cells[3].className = `loop-${r.state}`;
    return row;
  }));
  runTable.dataset.rows = String(runs.length);
  document.getElementById("training-runs-caption").textContent = runs.length ? "" : "no training run yet";
  const rolloutTable = document.getElementById("rollouts");
  rolloutTable.querySelector("tbody").replaceChildren(...rollouts.map(r => {
    const row = tableRow(
      [r.model_name, r.candidate_version, r.champion_version, r.stages.map(stageName).join(" → "), r.reason,
       time(r.last_time), r.cameras.join(", ")],
      {model: r.model_name, version: r.candidate_version, stage: r.stage});
    row.cells[3].className = `loop-${r.stage}`;
    return row;
  }));
  rolloutTable.dataset.rows = String(rollouts.length);
  // rollout_steps gives the newest steps per model oldest first: newest first here.
  const newest = [...steps].sort((a, b) => seconds(b.event_time) - seconds(a.event_time));
  const stepTable = document.getElementById("rollout-steps");
  stepTable.querySelector("tbody").replaceChildren(...newest.map(s => tableRow(
    [time(s.event_time), s.model_name, s.candidate_version,
     `${s.previous_stage ? stageName(s.previous_stage) + " → " : ""}${stageName(s.stage)}` +
       (s.stage === "canary" ? ` (${Math.round(s.canary_share * 100)}% of cameras)` : ""),
     s.actor,
     Object.entries(s.checks).sort().map(([k, v]) => `${k} ${Number.isInteger(v) ? v : v.toFixed(3)}`).join(", ")],
    {model: s.model_name, version: s.candidate_version, stage: s.stage})));
  stepTable.dataset.rows = String(newest.length);
}

async function refreshAll() {
  const error = document.getElementById("error");
  try {
    nextWindow();
    await refreshCameras();
    await Promise.all([refreshLive(), refreshCharts(), refreshSensorAnomalies(), refreshModels(),
                      refreshDrift(), refreshAnnotation(), refreshDatasets(), refreshLoop()]);
    error.textContent = "";
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (exc) {
    error.textContent = String(exc.message || exc);
  }
}

document.getElementById("window").addEventListener("change", refreshAll);
refreshAll();
setInterval(refreshAll, REFRESH_MS);
