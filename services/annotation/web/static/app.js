// The review UI: sign in, label the frame a task shows (the model's boxes as proposals), review disagreements,
// read the queue's figures. Plain JavaScript over the JSON API of services/annotation/web/api.py; nothing is
// loaded from elsewhere. Box coordinates are pixels of the frame, as the API takes them.
"use strict";

const PALETTE = ["#1a73e8", "#e8710a", "#188038", "#d93025", "#9334e6", "#12b5cb", "#f9ab00", "#e52592",
                 "#5f6368", "#7cb342"];
const HANDLE_CSS_PX = 7;      // a corner or edge is grabbed within this many screen pixels
const MIN_DRAWN_CSS_PX = 4;   // a drag shorter than this is a click, not a box

const state = {
  user: null, csrf: null, view: "signin",
  task: null, image: null, boxes: [], selected: -1,
  mode: "select", classIndex: 0, verdict: "labelled", drag: null, busy: false,
  notice: null,  // [text, kind] shown once the next task (or none) is open
};

const $ = (id) => document.getElementById(id);
const canvas = $("frame");
const ctx = canvas.getContext("2d");

// --- the API ---------------------------------------------------------------------------------------------------

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  if (response.status !== 204) {
    try { data = await response.json(); } catch (_) { data = null; }
  }
  if (response.status === 401 && path !== "/api/session") signedOut("Your session ended: sign in again.");
  return { status: response.status, data };
}

// --- signing in ------------------------------------------------------------------------------------------------

function signedIn(session) {
  state.user = session;
  state.csrf = session.csrf_token;
  $("who").textContent = `${session.name} (${session.role})`;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  $("help-button").hidden = false;
  $("review-tab").hidden = !session.roles.includes("reviewer");
  show("label");
}

function signedOut(why) {
  state.user = null; state.csrf = null; state.task = null;
  $("nav").hidden = true; $("sign-out").hidden = true; $("help-button").hidden = true;
  $("who").textContent = "";
  $("signin-error").textContent = why || "";
  show("signin");
}

$("signin").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("signin-error").textContent = "";
  const result = await api("POST", "/api/session", { name: $("name").value.trim(), token: $("token").value.trim() });
  if (result.status === 200) {
    $("token").value = "";
    signedIn(result.data);
  } else {
    $("signin-error").textContent = (result.data && result.data.error) || `sign-in failed (${result.status})`;
  }
});

$("sign-out").addEventListener("click", async () => {
  if (state.task && state.task.lease_id) await api("POST", `/api/tasks/${state.task.task_id}/release`, { lease_id: state.task.lease_id });
  await api("DELETE", "/api/session");
  signedOut("Signed out.");
});

// --- views -----------------------------------------------------------------------------------------------------

function show(view) {
  state.view = view;
  document.body.dataset.view = view;
  for (const name of ["signin", "label", "review", "stats"]) $(`${name}-view`).hidden = name !== view;
  for (const tab of document.querySelectorAll("#nav .tab")) {
    if (tab.dataset.view === view) tab.setAttribute("aria-current", "page"); else tab.removeAttribute("aria-current");
  }
  if (view === "label" && !state.task) nextTask();
  if (view === "review") loadDisagreements();
  if (view === "stats") loadStats();
  // Someone may already be typing (the page asked who is signed in meanwhile): keep their focus.
  if (view === "signin" && !$("signin").contains(document.activeElement)) $("name").focus();
}

for (const tab of document.querySelectorAll("#nav .tab")) tab.addEventListener("click", () => show(tab.dataset.view));

// --- a task ----------------------------------------------------------------------------------------------------

function classes() { return state.task ? state.task.schema.classes : []; }
function colour(label) { const i = classes().indexOf(label); return PALETTE[(i < 0 ? 0 : i) % PALETTE.length]; }

function message(text, kind, items) {
  const box = $("message");
  box.className = kind || "";
  box.textContent = text;
  if (items && items.length) {
    const list = document.createElement("ul");
    for (const item of items) { const li = document.createElement("li"); li.textContent = item; list.appendChild(li); }
    box.appendChild(list);
  }
}

async function nextTask() {
  if (state.busy) return;
  state.busy = true;
  try {
    const result = await api("POST", "/api/tasks/next");
    if (result.status === 204) { openTask(null); return; }
    if (result.status !== 200) { message((result.data && result.data.error) || `could not lease a task (${result.status})`, "error"); return; }
    await openTask(result.data);
  } finally {
    state.busy = false;
  }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`the image did not load: ${url}`));
    image.src = url;
  });
}

async function openTask(task) {
  state.task = task; state.boxes = []; state.selected = -1; state.verdict = "labelled"; state.mode = "select";
  state.image = null;
  $("empty").hidden = task !== null;
  canvas.hidden = task === null;
  canvas.dataset.task = task ? task.task_id : "";
  canvas.dataset.ready = "0";
  if (!task) {
    $("empty-text").textContent = state.notice ? `${state.notice[0]} ` : "Nothing to label right now. ";
    state.notice = null;
    $("selection").textContent = ""; $("lease").textContent = ""; $("task-caption").textContent = "";
    renderSide(); draw();
    return;
  }
  state.boxes = task.proposals.map((p) => ({ label: p.label, x1: p.x1, y1: p.y1, x2: p.x2, y2: p.y2,
                                            score: p.score, proposal: true }));
  state.classIndex = Math.max(0, Math.min(state.classIndex, task.schema.classes.length - 1));
  canvas.width = task.width; canvas.height = task.height;
  $("selection").textContent = `${task.selection.rule}: ${task.selection.detail || ""}`;
  $("task-caption").textContent = `${task.camera_id} · ${task.captured_at || ""} · ${task.model.name} ${task.model.version}`
    + ` · ${task.width}×${task.height}` + (task.faces_blurred ? " · faces blurred" : "")
    + (task.labels_wanted > 1 ? ` · labelled by ${task.labels_wanted} people` : "");
  message(...(state.notice || [""]));
  state.notice = null;
  renderLease();
  renderSide(); draw();
  try {
    state.image = await loadImage(task.image_url);
  } catch (error) {
    message(error.message, "error");
  }
  if (state.task === task) { draw(); canvas.dataset.ready = "1"; canvas.focus(); }
}

function renderLease() {
  const task = state.task;
  if (!task || !task.lease_expires_at) { $("lease").textContent = ""; return; }
  const left = Math.round((Date.parse(task.lease_expires_at) - Date.now()) / 1000);
  $("lease").textContent = left > 0 ? `yours for ${Math.floor(left / 60)} min ${left % 60} s`
    : "your lease has expired: submit now, it is kept if nobody else took the task";
}
setInterval(renderLease, 1000);

$("retry").addEventListener("click", () => nextTask());
// An empty queue is looked at again now and then.
setInterval(() => { if (state.view === "label" && state.user && !state.task) nextTask(); }, 10000);

// --- the side panels -------------------------------------------------------------------------------------------

function renderSide() {
  const list = $("classes");
  list.textContent = "";
  const filter = $("class-filter").value.trim().toLowerCase();
  classes().forEach((name, i) => {
    if (filter && !name.toLowerCase().includes(filter)) return;
    const li = document.createElement("li");
    li.dataset.class = name;
    if (i === state.classIndex) li.className = "current";
    const key = i < 10 ? `<kbd>${(i + 1) % 10}</kbd>` : "";
    li.innerHTML = `${key}<span class="swatch"></span><span></span>`;
    li.querySelector(".swatch").style.background = colour(name);
    li.lastChild.textContent = name;
    li.addEventListener("click", () => pickClass(i));
    list.appendChild(li);
  });

  const body = $("boxes").querySelector("tbody");
  body.textContent = "";
  state.boxes.forEach((box, i) => {
    const row = document.createElement("tr");
    row.dataset.index = i;
    row.className = (i === state.selected ? "selected " : "") + (box.proposal ? "proposal" : "");
    const select = document.createElement("select");
    const known = classes().includes(box.label) ? classes() : [box.label, ...classes()];
    for (const name of known) {
      const option = document.createElement("option");
      option.value = name; option.textContent = name; option.selected = name === box.label;
      select.appendChild(option);
    }
    select.addEventListener("change", () => { box.label = select.value; box.proposal = false; draw(); renderSide(); });
    select.addEventListener("click", (event) => event.stopPropagation());
    const cells = [String(i + 1), select,
                   box.proposal ? `proposal ${box.score !== undefined ? box.score.toFixed(2) : ""}` : "yours",
                   `${Math.round(box.x2 - box.x1)}×${Math.round(box.y2 - box.y1)}`];
    for (const cell of cells) {
      const td = document.createElement("td");
      if (typeof cell === "string") td.textContent = cell; else td.appendChild(cell);
      row.appendChild(td);
    }
    const remove = document.createElement("button");
    remove.type = "button"; remove.textContent = "✕"; remove.title = "Delete (Delete)";
    remove.addEventListener("click", (event) => { event.stopPropagation(); deleteBox(i); });
    const td = document.createElement("td"); td.appendChild(remove); row.appendChild(td);
    row.addEventListener("click", () => { state.selected = i; draw(); renderSide(); });
    body.appendChild(row);
  });

  const rules = $("rules");
  rules.textContent = "";
  if (state.task) {
    const schema = state.task.schema;
    const all = [...schema.rules];
    if (schema.min_box_px) all.push(`Boxes are at least ${schema.min_box_px} px a side, inside the image.`);
    for (const rule of all) { const li = document.createElement("li"); li.textContent = rule; rules.appendChild(li); }
  }

  const banner = $("verdict-banner");
  banner.hidden = state.verdict === "labelled";
  banner.textContent = state.verdict === "nothing_to_label" ? "Nothing to label" : "Unusable";
  $("nothing").classList.toggle("active", state.verdict === "nothing_to_label");
  $("unusable").classList.toggle("active", state.verdict === "unusable");
  $("draw").classList.toggle("active", state.mode === "draw");
  canvas.classList.toggle("drawing", state.mode === "draw");
  canvas.dataset.boxes = String(state.boxes.filter((b) => !b.proposal).length);
  canvas.dataset.proposals = String(state.boxes.filter((b) => b.proposal).length);
  canvas.dataset.selected = String(state.selected);
  canvas.dataset.mode = state.mode;
  canvas.dataset.verdict = state.verdict;
}

// --- drawing ---------------------------------------------------------------------------------------------------

function scale() {  // frame pixels per screen pixel
  const rect = canvas.getBoundingClientRect();
  return rect.width ? canvas.width / rect.width : 1;
}

function draw() {
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.task) return;
  if (state.image) ctx.drawImage(state.image, 0, 0, canvas.width, canvas.height);
  const s = scale();
  ctx.font = `${Math.round(13 * s)}px system-ui, sans-serif`;
  ctx.globalAlpha = state.verdict === "labelled" ? 1 : 0.35;
  state.boxes.forEach((box, i) => {
    const selected = i === state.selected;
    ctx.strokeStyle = colour(box.label);
    ctx.lineWidth = (selected ? 3 : 2) * s;
    ctx.setLineDash(box.proposal ? [6 * s, 4 * s] : []);
    ctx.strokeRect(box.x1, box.y1, box.x2 - box.x1, box.y2 - box.y1);
    ctx.setLineDash([]);
    const text = box.proposal ? `${box.label} ${box.score !== undefined ? box.score.toFixed(2) : ""}?` : box.label;
    const width = ctx.measureText(text).width + 6 * s;
    const top = Math.max(0, box.y1 - 16 * s);
    ctx.fillStyle = colour(box.label);
    ctx.fillRect(box.x1, top, width, 16 * s);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, box.x1 + 3 * s, top + 12.5 * s);
    if (selected) {
      const h = 4 * s;
      for (const [x, y] of corners(box)) { ctx.fillStyle = "#fff"; ctx.fillRect(x - h, y - h, 2 * h, 2 * h);
        ctx.strokeRect(x - h, y - h, 2 * h, 2 * h); }
    }
  });
  ctx.globalAlpha = 1;
  if (state.drag && state.drag.kind === "new" && state.drag.box) {
    const b = state.drag.box;
    ctx.strokeStyle = colour(classes()[state.classIndex]);
    ctx.lineWidth = 2 * s;
    ctx.strokeRect(b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1);
  }
}

function corners(b) { return [[b.x1, b.y1], [b.x2, b.y1], [b.x1, b.y2], [b.x2, b.y2]]; }

function clampBox(box) {
  const w = canvas.width, h = canvas.height;
  const x1 = Math.min(box.x1, box.x2), x2 = Math.max(box.x1, box.x2);
  const y1 = Math.min(box.y1, box.y2), y2 = Math.max(box.y1, box.y2);
  box.x1 = Math.max(0, Math.min(w, x1)); box.x2 = Math.max(0, Math.min(w, x2));
  box.y1 = Math.max(0, Math.min(h, y1)); box.y2 = Math.max(0, Math.min(h, y2));
  for (const k of ["x1", "y1", "x2", "y2"]) box[k] = Math.round(box[k] * 10) / 10;
  return box;
}

// --- editing ---------------------------------------------------------------------------------------------------

function changed() { draw(); renderSide(); }

function keep(box) { box.proposal = false; }  // a proposal touched is accepted

function pickClass(i) {
  if (i < 0 || i >= classes().length) return;
  state.classIndex = i;
  const box = state.boxes[state.selected];
  if (box) { box.label = classes()[i]; keep(box); }
  changed();
}

function deleteBox(i) {
  if (i < 0 || i >= state.boxes.length) return;
  state.boxes.splice(i, 1);
  state.selected = Math.min(state.selected, state.boxes.length - 1);
  if (state.selected === i && state.boxes.length === 0) state.selected = -1;
  changed();
}

function addBox(box) {
  clampBox(box);
  state.boxes.push(box);
  state.selected = state.boxes.length - 1;
  if (state.verdict !== "labelled") state.verdict = "labelled";
  changed();
}

function centreBox() {
  const w = canvas.width, h = canvas.height;
  const side = Math.round(Math.min(w, h) / 4);
  addBox({ label: classes()[state.classIndex], x1: Math.round(w / 2 - side / 2), y1: Math.round(h / 2 - side / 2),
           x2: Math.round(w / 2 + side / 2), y2: Math.round(h / 2 + side / 2), proposal: false });
}

function toggleVerdict(verdict) {
  state.verdict = state.verdict === verdict ? "labelled" : verdict;
  changed();
}

function nudge(dx, dy, resize) {
  const box = state.boxes[state.selected];
  if (!box) return;
  keep(box);
  if (resize) {
    box.x2 = Math.max(box.x1 + 1, box.x2 + dx); box.y2 = Math.max(box.y1 + 1, box.y2 + dy);
  } else {
    const w = box.x2 - box.x1, h = box.y2 - box.y1;
    box.x1 = Math.max(0, Math.min(canvas.width - w, box.x1 + dx));
    box.y1 = Math.max(0, Math.min(canvas.height - h, box.y1 + dy));
    box.x2 = box.x1 + w; box.y2 = box.y1 + h;
  }
  clampBox(box);
  changed();
}

async function submit() {
  const task = state.task;
  if (!task || state.busy) return;
  const boxes = state.verdict === "labelled"
    ? state.boxes.filter((b) => !b.proposal).map((b) => ({ label: b.label, x1: b.x1, y1: b.y1, x2: b.x2, y2: b.y2 }))
    : [];
  state.busy = true;
  let result;
  try {
    result = await api("POST", `/api/tasks/${task.task_id}/submit`,
                       { lease_id: task.lease_id, verdict: state.verdict, boxes });
  } finally {
    state.busy = false;
  }
  if (result.status === 200) {
    document.body.dataset.lastLabel = result.data.label_id;
    message(`Saved: ${result.data.verdict}, ${result.data.boxes.length} box(es), ${result.data.status}.`, "ok");
    state.notice = [$("message").textContent, "ok"];
    await nextTask();
  } else if (result.status === 422) {
    message("Not saved: the submission breaks these rules.", "error", result.data.violations || []);
  } else if (result.status === 409) {
    message(`${result.data.error}`, "error");
    state.task = null;
    setTimeout(nextTask, 1500);
  } else {
    message((result.data && result.data.error) || `not saved (${result.status})`, "error");
  }
}

async function release() {
  const task = state.task;
  if (!task) return;
  await api("POST", `/api/tasks/${task.task_id}/release`, { lease_id: task.lease_id });
  state.notice = ["Released: the task is back in the queue."];
  openTask(null);
}

$("draw").addEventListener("click", () => { state.mode = state.mode === "draw" ? "select" : "draw"; changed(); });
$("accept-all").addEventListener("click", () => { state.boxes.forEach(keep); changed(); });
$("nothing").addEventListener("click", () => toggleVerdict("nothing_to_label"));
$("unusable").addEventListener("click", () => toggleVerdict("unusable"));
$("submit").addEventListener("click", submit);
$("release").addEventListener("click", release);
$("class-filter").addEventListener("input", renderSide);
$("class-filter").addEventListener("keydown", (event) => {
  if (event.key === "Enter") {
    event.preventDefault();
    const first = $("classes").querySelector("li");
    if (first) pickClass(classes().indexOf(first.dataset.class));
    $("class-filter").value = ""; renderSide(); canvas.focus();
  } else if (event.key === "Escape") {
    $("class-filter").value = ""; renderSide(); canvas.focus();
  }
});

// --- the mouse -------------------------------------------------------------------------------------------------

function point(event) {
  const rect = canvas.getBoundingClientRect();
  return { x: (event.clientX - rect.left) * canvas.width / rect.width,
           y: (event.clientY - rect.top) * canvas.height / rect.height };
}

function handleAt(box, p) {
  const t = HANDLE_CSS_PX * scale();
  const near = (a, b) => Math.abs(a - b) <= t;
  const insideX = p.x >= box.x1 - t && p.x <= box.x2 + t, insideY = p.y >= box.y1 - t && p.y <= box.y2 + t;
  if (!insideX || !insideY) return null;
  const h = (near(p.x, box.x1) ? "w" : near(p.x, box.x2) ? "e" : "");
  const v = (near(p.y, box.y1) ? "n" : near(p.y, box.y2) ? "s" : "");
  return (v + h) || null;
}

function boxAt(p) {
  let best = -1, bestArea = Infinity;
  state.boxes.forEach((b, i) => {
    if (p.x >= b.x1 && p.x <= b.x2 && p.y >= b.y1 && p.y <= b.y2) {
      const area = (b.x2 - b.x1) * (b.y2 - b.y1);
      if (area < bestArea) { best = i; bestArea = area; }
    }
  });
  return best;
}

canvas.addEventListener("mousedown", (event) => {
  if (!state.task || event.button !== 0) return;
  event.preventDefault();
  canvas.focus();
  const p = point(event);
  const selected = state.boxes[state.selected];
  const handle = state.mode === "select" && selected ? handleAt(selected, p) : null;
  if (handle) {
    state.drag = { kind: "resize", handle, index: state.selected, start: p, original: { ...selected } };
    return;
  }
  const hit = state.mode === "select" ? boxAt(p) : -1;
  if (hit >= 0) {
    state.selected = hit;
    state.drag = { kind: "move", index: hit, start: p, original: { ...state.boxes[hit] } };
    changed();
    return;
  }
  state.drag = { kind: "new", start: p, box: null };
});

window.addEventListener("mousemove", (event) => {
  const drag = state.drag;
  if (!drag) {
    if (state.task && event.target === canvas && state.mode === "select") {
      const selected = state.boxes[state.selected];
      const handle = selected ? handleAt(selected, point(event)) : null;
      canvas.style.cursor = handle ? `${handle}-resize` : boxAt(point(event)) >= 0 ? "move" : "crosshair";
    }
    return;
  }
  const p = point(event);
  const dx = p.x - drag.start.x, dy = p.y - drag.start.y;
  if (drag.kind === "new") {
    drag.box = { x1: Math.min(drag.start.x, p.x), y1: Math.min(drag.start.y, p.y),
                 x2: Math.max(drag.start.x, p.x), y2: Math.max(drag.start.y, p.y) };
  } else {
    const box = state.boxes[drag.index], o = drag.original;
    if (Math.abs(dx) + Math.abs(dy) > 0) keep(box);
    if (drag.kind === "move") {
      const w = o.x2 - o.x1, h = o.y2 - o.y1;
      box.x1 = Math.max(0, Math.min(canvas.width - w, o.x1 + dx)); box.y1 = Math.max(0, Math.min(canvas.height - h, o.y1 + dy));
      box.x2 = box.x1 + w; box.y2 = box.y1 + h;
    } else {
      if (drag.handle.includes("w")) box.x1 = o.x1 + dx;
      if (drag.handle.includes("e")) box.x2 = o.x2 + dx;
      if (drag.handle.includes("n")) box.y1 = o.y1 + dy;
      if (drag.handle.includes("s")) box.y2 = o.y2 + dy;
    }
  }
  draw();
});

window.addEventListener("mouseup", () => {
  const drag = state.drag;
  if (!drag) return;
  state.drag = null;
  if (drag.kind === "new") {
    const b = drag.box, s = scale();
    if (b && (b.x2 - b.x1) / s >= MIN_DRAWN_CSS_PX && (b.y2 - b.y1) / s >= MIN_DRAWN_CSS_PX) {
      addBox({ label: classes()[state.classIndex], ...b, proposal: false });
    } else {
      state.selected = -1;
    }
    state.mode = "select";
    changed();
    return;
  }
  clampBox(state.boxes[drag.index]);
  changed();
});

// --- the keyboard ----------------------------------------------------------------------------------------------

function labelKeys(event) {
  const key = event.key;
  const arrows = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  if (arrows[key]) {
    const step = event.shiftKey ? 10 : 1;
    nudge(arrows[key][0] * step, arrows[key][1] * step, event.altKey);
    return true;
  }
  if (/^[0-9]$/.test(key)) { pickClass((Number(key) + 9) % 10); return true; }
  switch (key) {
    case "n": state.mode = state.mode === "draw" ? "select" : "draw"; changed(); return true;
    case "b": centreBox(); return true;
    case "c": $("class-filter").focus(); return true;
    case "a": { const box = state.boxes[state.selected]; if (box) { keep(box); changed(); } return true; }
    case "A": state.boxes.forEach(keep); changed(); return true;
    case "x": toggleVerdict("nothing_to_label"); return true;
    case "u": toggleVerdict("unusable"); return true;
    case "Delete": case "Backspace": deleteBox(state.selected); return true;
    case "Enter": submit(); return true;
    case "Tab": {
      const n = state.boxes.length;
      if (n) state.selected = event.shiftKey ? (state.selected <= 0 ? n - 1 : state.selected - 1) : (state.selected + 1) % n;
      changed();
      return true;
    }
    case "Escape": state.mode = "select"; state.selected = -1; changed(); return true;
    default: return false;
  }
}

document.addEventListener("keydown", (event) => {
  if (!state.user) return;
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement && document.activeElement.tagName);
  if (typing || $("help").open || event.ctrlKey || event.metaKey) return;
  if (event.key === "?") { $("help").showModal(); event.preventDefault(); return; }
  if (state.view === "label" && state.task && labelKeys(event)) event.preventDefault();
});

$("help-button").addEventListener("click", () => $("help").showModal());

// --- review ----------------------------------------------------------------------------------------------------

function drawLabel(target, image, task, label) {
  target.width = task.width; target.height = task.height;
  const c = target.getContext("2d");
  if (image) c.drawImage(image, 0, 0, task.width, task.height);
  const s = Math.max(1, task.width / 640);
  c.font = `${Math.round(13 * s)}px system-ui, sans-serif`;
  label.boxes.forEach((box) => {
    const i = task.schema.classes.indexOf(box.label);
    c.strokeStyle = PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
    c.lineWidth = 2 * s;
    c.strokeRect(box.x1, box.y1, box.x2 - box.x1, box.y2 - box.y1);
    c.fillStyle = c.strokeStyle;
    c.fillText(box.label, box.x1 + 2, Math.max(12 * s, box.y1 - 3));
  });
}

async function loadDisagreements() {
  const result = await api("GET", "/api/review/disagreements");
  const holder = $("disagreements");
  holder.textContent = "";
  if (result.status !== 200) { $("review-message").textContent = (result.data && result.data.error) || ""; return; }
  holder.dataset.items = String(result.data.items.length);
  $("review-empty").hidden = result.data.items.length > 0;
  for (const { task, labels } of result.data.items) {
    const card = document.createElement("div");
    card.className = "disagreement";
    card.dataset.task = task.task_id;
    const title = document.createElement("p");
    const agreement = labels.find((l) => l.agreement !== null);
    title.textContent = `${task.camera_id} · ${task.selection.rule} · ${task.captured_at || ""}`
      + (agreement ? ` · agreement ${agreement.agreement.toFixed(2)}` : "");
    card.appendChild(title);
    const pair = document.createElement("div");
    pair.className = "pair";
    const canvases = labels.map((label, i) => {
      const side = document.createElement("div");
      const heading = document.createElement("h3");
      heading.textContent = `${String.fromCharCode(65 + i)}: ${label.annotator}, ${label.verdict}, ${label.boxes.length} box(es)`;
      const target = document.createElement("canvas");
      const accept = document.createElement("button");
      accept.type = "button"; accept.textContent = `Accept ${String.fromCharCode(65 + i)}`;
      accept.dataset.label = label.label_id;
      accept.addEventListener("click", () => review(task.task_id, { decision: "accept", label_id: label.label_id }));
      side.append(heading, target, accept);
      pair.appendChild(side);
      return target;
    });
    card.appendChild(pair);
    const reject = document.createElement("button");
    reject.type = "button"; reject.textContent = "Reject the task"; reject.className = "reject";
    reject.addEventListener("click", () => review(task.task_id, { decision: "reject" }));
    card.appendChild(reject);
    holder.appendChild(card);
    loadImage(task.image_url).catch(() => null).then((image) => {
      labels.forEach((label, i) => drawLabel(canvases[i], image, task, label));
    });
  }
}

async function review(taskId, decision) {
  const result = await api("POST", `/api/tasks/${taskId}/review`, decision);
  $("review-message").textContent = result.status === 200 ? `Settled: ${result.data.status}.`
    : (result.data && (result.data.violations || [result.data.error]).join("; ")) || `not saved (${result.status})`;
  loadDisagreements();
}

$("review-refresh").addEventListener("click", loadDisagreements);

// --- statistics ------------------------------------------------------------------------------------------------

function statsTable(value) {
  const table = document.createElement("table");
  table.className = "stats-table";
  for (const [key, item] of Object.entries(value)) {
    const row = table.insertRow();
    row.dataset.key = key;
    row.insertCell().textContent = key.replaceAll("_", " ");
    const cell = row.insertCell();
    if (item !== null && typeof item === "object") cell.appendChild(statsTable(item));
    else cell.textContent = typeof item === "number" && !Number.isInteger(item) ? item.toFixed(3) : String(item);
  }
  return table;
}

async function loadStats() {
  const result = await api("GET", "/api/stats");
  if (result.status !== 200) return;
  $("stats").textContent = "";
  $("stats").appendChild(statsTable(result.data));
  $("stats-updated").textContent = `at ${new Date().toLocaleTimeString()}`;
}
setInterval(() => { if (state.view === "stats") loadStats(); }, 10000);

// --- start -----------------------------------------------------------------------------------------------------

(async () => {
  const result = await api("GET", "/api/session");
  if (state.user) return;  // signed in by hand before the answer came
  if (result.status === 200 && result.data.name && result.data.csrf_token) signedIn(result.data);
  else if (state.view !== "signin") signedOut("");
})();
