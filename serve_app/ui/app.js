// samgraph annotation page. Plain ES module, no build step, no network access beyond the ingress.
//
// It uses only the public API, relative to the ingress root (so it works under any route prefix):
//   POST v1/segment   the image once (multipart, mask_format "none"), then every prompt by image_id
//                     with return_logits, the chosen mask's low_res_logits going back as mask_input;
//   POST v1/examples  an accepted mask (mask_rle) with its label;
//   GET  v1/examples  labels and counts of the collection (label completion);
//   POST v1/predict   every object with its suggested label.
// Masks travel as COCO RLE (a few kB per mask) and are decoded here (rle.js); accepted masks go back
// to the API and into the COCO export as the same RLE, with no re-encoding.

import { cocoDataset, decodeRle } from "./rle.js";

const $ = (id) => document.getElementById(id);
const API_ROOT = new URL("../", window.location.href);
const CURRENT_COLOR = [30, 144, 255];
const PALETTE = [
  [255, 99, 71], [50, 205, 50], [255, 215, 0], [186, 85, 211], [0, 206, 209],
  [255, 140, 0], [199, 21, 133], [154, 205, 50], [240, 128, 128], [72, 209, 204],
];
const FILL_ALPHA = 110;
const PREDICTION_FILL_ALPHA = 80;
const DRAG_THRESHOLD_PX = 5; // screen pixels before a press becomes a box

/** An error to show: from the API body {error: {code, message, field, request_id}}, or the page's own. */
class ShownError extends Error {
  constructor(code, message, { status = null, field = null, requestId = null, where = null } = {}) {
    super(message);
    Object.assign(this, { code, status, field, requestId, where });
  }
}

const emptyState = () => ({ points: [], box: null, masks: null, sel: 0 });

const ui = {
  file: null, // the File being annotated; sent again if the server evicted its features
  image: null, // {id, image_id, width, height, file_name}
  images: [], // every image of the session, for the export
  history: [emptyState()],
  at: 0,
  annotations: [], // {image, label, rle, bbox_xyxy, area_px, example_id, source}
  predictions: [], // the last /v1/predict instances of the current image, with color and state
  queue: Promise.resolve(), // segment requests run one after the other: each needs the last logits
  busy: 0,
  scale: 1,
  transposed: null, // the overlay's pixels, column-major: a canvas (h wide, w high) and its ImageData
  pixels: null,
  renders: 0,
  masksShown: 0, // prompts answered and drawn; with the timings on #status's dataset
  warnings: new Set(),
  overlayVisible: true,
};

const decoded = new WeakMap(); // RLE object -> decoded mask

function maskOf(rle) {
  let m = decoded.get(rle);
  if (!m) {
    m = decodeRle(rle);
    decoded.set(rle, m);
  }
  return m;
}

// ------------------------------------------------------------------ API
async function call(method, path, { json, form } = {}) {
  const url = new URL(path, API_ROOT);
  const init = { method, headers: {} };
  if (form) init.body = form;
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["content-type"] = "application/json";
  }
  const where = `${method} ${url.pathname}`;
  let res;
  try {
    res = await fetch(url, init);
  } catch (e) {
    throw new ShownError("network", `the service did not answer: ${e.message}`, { where });
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const err = data && data.error ? data.error : { code: `http_${res.status}`, message: (data && data.reason) || text.slice(0, 300) || res.statusText };
    throw new ShownError(err.code, err.message, { status: res.status, field: err.field, requestId: err.request_id, where });
  }
  if (data === null) throw new ShownError("bad_response", "the answer is not JSON", { status: res.status, where });
  if (data.warnings) showWarnings(data.warnings);
  return data;
}

async function uploadImage(file) {
  const form = new FormData();
  form.append("image", file, file.name || "image");
  form.append("request", JSON.stringify({ mask_format: "none" }));
  return call("POST", "v1/segment", { form });
}

/** POST ``path`` with the current image_id; if the service no longer has the image, send it again once. */
async function callWithImage(path, body) {
  const image = ui.image;
  try {
    return await call("POST", path, { json: { ...body, image_id: image.image_id } });
  } catch (e) {
    if (e.code !== "image_not_cached" || !ui.file) throw e;
    setStatus("the service evicted the image; sending it again…");
    const out = await uploadImage(ui.file);
    if (out.image_id !== image.image_id) throw new ShownError("image_changed", "the image sent again has another image_id");
    return call("POST", path, { json: { ...body, image_id: image.image_id } });
  }
}

// ------------------------------------------------------------------ status, errors, warnings
function setStatus(text) {
  $("status").textContent = text;
}

function setBusy(delta, text) {
  ui.busy += delta;
  document.body.dataset.busy = ui.busy > 0 ? "1" : "0";
  if (text) setStatus(text);
}

function showError(e) {
  console.error(e);
  const err = e instanceof ShownError ? e : new ShownError("page_error", String(e && e.message ? e.message : e));
  let text = `${err.code}: ${err.message}`;
  if (err.field) text += ` (field: ${err.field})`;
  const ctx = [err.where, err.status ? `HTTP ${err.status}` : null, err.requestId ? `request ${err.requestId}` : null].filter(Boolean);
  if (ctx.length) text += ` [${ctx.join(", ")}]`;
  $("error-text").textContent = text;
  $("error").dataset.code = err.code;
  $("error").hidden = false;
  setStatus(`error: ${err.code}`);
}

function hideError() {
  $("error").hidden = true;
  delete $("error").dataset.code;
}

function showWarnings(warnings) {
  for (const w of warnings || []) ui.warnings.add(w);
  $("warning").textContent = [...ui.warnings].join(" · ");
  $("warning").hidden = ui.warnings.size === 0;
}

// ------------------------------------------------------------------ image
async function openImage(file) {
  if (!file) return;
  hideError();
  setBusy(+1, `sending ${file.name || "the image"} (it is encoded once)…`);
  try {
    const t0 = performance.now();
    const out = await uploadImage(file);
    const url = URL.createObjectURL(file);
    const probe = new Image(); // decoded first, so that a failure leaves the current image on screen
    probe.src = url;
    try {
      await probe.decode();
    } catch {
      URL.revokeObjectURL(url);
      throw new ShownError("undisplayable_image", "the service read the image, but this browser cannot display its format");
    }
    $("photo").src = url;
    if (ui.photoUrl) URL.revokeObjectURL(ui.photoUrl);
    ui.photoUrl = url;
    let image = ui.images.find((im) => im.image_id === out.image_id);
    if (!image) {
      image = { id: ui.images.length + 1, image_id: out.image_id, width: out.width, height: out.height, file_name: file.name || `image-${ui.images.length + 1}` };
      ui.images.push(image);
    }
    ui.file = file;
    ui.image = image;
    ui.predictions = [];
    resetHistory();
    for (const c of [$("overlay"), $("prompts")]) {
      c.width = image.width;
      c.height = image.height;
    }
    $("drop-hint").hidden = true;
    $("stage").hidden = false;
    $("stage").dataset.imageId = image.image_id;
    layout();
    renderPredictions();
    render();
    const ms = (performance.now() - t0).toFixed(0);
    setStatus(`${image.file_name}: ${image.width}×${image.height}, ${out.encode_cached ? "already encoded" : "encoded"} (${ms} ms). Click on an object.`);
  } catch (e) {
    showError(e);
  } finally {
    setBusy(-1);
  }
}

function layout() {
  if (!ui.image) return;
  const viewer = $("viewer").getBoundingClientRect();
  const pad = 8;
  const s = Math.min((viewer.width - 2 * pad) / ui.image.width, (viewer.height - 2 * pad) / ui.image.height, 4);
  ui.scale = Math.max(s, 0.01);
  $("stage").style.width = `${ui.image.width * ui.scale}px`;
  $("stage").style.height = `${ui.image.height * ui.scale}px`;
}

// ------------------------------------------------------------------ prompts and history
const current = () => ui.history[ui.at];

function resetHistory() {
  ui.history = [emptyState()];
  ui.at = 0;
}

function push(state) {
  ui.history = ui.history.slice(0, ui.at + 1);
  ui.history.push(state);
  ui.at = ui.history.length - 1;
}

function undo() {
  if (ui.at > 0) {
    ui.at--;
    render();
  }
}

function redo() {
  if (ui.at < ui.history.length - 1) {
    ui.at++;
    render();
  }
}

function clearPrompts() {
  const s = current();
  if (s.points.length || s.box) {
    push(emptyState());
    render();
  }
}

function cycle(step) {
  const s = current();
  if (!s.masks || s.masks.length < 2) return;
  s.sel = (s.sel + step + s.masks.length) % s.masks.length;
  render();
}

function multimaskOutput() {
  return { auto: null, multi: true, single: false }[$("multimask").value];
}

/** A point [x, y, 1|0] or a box [x0, y0, x1, y1] added to the object; ``t0`` the input event's time. */
function addPrompt({ point = null, box = null }, t0) {
  if (!ui.image) return;
  hideError();
  const prev = current();
  const next = { points: point ? [...prev.points, point] : prev.points, box: box || prev.box, masks: null, sel: 0 };
  push(next);
  drawPrompts();
  updateControls();
  ui.queue = ui.queue.then(() => segment(next, prev, t0));
}

async function segment(state, prev, t0) {
  if (!ui.history.includes(state)) return; // undone and replaced, or cleared, before its turn
  const prompt = {};
  if (state.points.length) prompt.points = state.points;
  if (state.box) prompt.box_xyxy = state.box;
  const refine = prev.masks && prev.masks[prev.sel];
  if (refine && refine.low_res_logits) prompt.mask_input = refine.low_res_logits;
  const body = { prompts: [prompt], return_logits: true, mask_format: "rle", max_masks: 3 };
  const mm = multimaskOutput();
  if (mm !== null) body.multimask_output = mm;
  setBusy(+1, "segmenting…");
  try {
    const tf = performance.now();
    const out = await callWithImage("v1/segment", body);
    const fetchMs = performance.now() - tf;
    state.masks = out.results[0].masks;
    state.sel = 0;
    if (current() === state) {
      const tr = performance.now();
      render();
      const renderMs = performance.now() - tr;
      requestAnimationFrame(() => {
        // From the input event to the frame that shows the new overlay (its rAF callback).
        const ms = performance.now() - t0;
        Object.assign($("status").dataset, {
          masksShown: String(++ui.masksShown),
          clickMs: ms.toFixed(1), fetchMs: fetchMs.toFixed(1), renderMs: renderMs.toFixed(1), serverMs: out.timing_ms.total.toFixed(1),
        });
        setStatus(`mask in ${ms.toFixed(0)} ms (server ${out.timing_ms.total.toFixed(0)} ms)`);
      });
    }
  } catch (e) {
    const i = ui.history.indexOf(state); // the prompt did not work: take it back, show why
    if (i >= 0) {
      ui.history = ui.history.slice(0, i);
      ui.at = Math.min(ui.at, i - 1);
      render();
    }
    showError(e);
  } finally {
    setBusy(-1);
  }
}

// ------------------------------------------------------------------ drawing
const pack = ([r, g, b], a) => ((a << 24) | (b << 16) | (g << 8) | r) >>> 0; // RGBA bytes, little-endian

/** Paint a decoded mask into ``px``, the overlay's pixels as Uint32 in the mask's column-major order
 *  (index x * h + y): a translucent fill, then an opaque outline about ``t`` pixels wide inside the mask. */
function paintMask(px, m, color, fillAlpha, t) {
  const { height: h, data, runs } = m;
  const n = data.length;
  const fill = pack(color, fillAlpha);
  const line = pack(color, 255);
  for (let r = 0; r < runs.length; r += 2) px.fill(fill, runs[r], runs[r + 1]);
  for (let r = 0; r < runs.length; r += 2) {
    for (let i = runs[r], e = runs[r + 1], y = i % h; i < e; i++, y = y + 1 === h ? 0 : y + 1) {
      const edge = y === 0 || y === h - 1 || i < h || i >= n - h || !data[i - 1] || !data[i + 1] || !data[i - h] || !data[i + h];
      if (!edge) continue;
      px[i] = line;
      for (let k = 1; k < t; k++) { // thicken inwards along the column and the row
        if (y - k >= 0 && data[i - k]) px[i - k] = line;
        if (y + k < h && data[i + k]) px[i + k] = line;
        if (i - k * h >= 0 && data[i - k * h]) px[i - k * h] = line;
        if (i + k * h < n && data[i + k * h]) px[i + k * h] = line;
      }
    }
  }
}

/** Redraw the overlay: open predictions, then the current mask on top. Painted column-major into a
 *  transposed buffer (memset fills, contiguous reads), then drawn transposed back onto the canvas. */
function render() {
  updateControls();
  drawPrompts();
  if (!ui.image) return;
  const { width: w, height: h } = ui.image;
  if (!ui.transposed || ui.transposed.width !== h || ui.transposed.height !== w) {
    ui.transposed = Object.assign(document.createElement("canvas"), { width: h, height: w });
    ui.pixels = new ImageData(h, w);
  }
  const px = new Uint32Array(ui.pixels.data.buffer);
  px.fill(0);
  const t = Math.max(1, Math.round(1 / ui.scale));
  for (const p of ui.predictions) if (p.state === "open") paintMask(px, maskOf(p.rle), p.color, PREDICTION_FILL_ALPHA, t);
  const s = current();
  const m = s.masks && s.masks[s.sel];
  if (m && m.rle) paintMask(px, maskOf(m.rle), CURRENT_COLOR, FILL_ALPHA, t);
  ui.transposed.getContext("2d").putImageData(ui.pixels, 0, 0);
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.setTransform(0, 1, 1, 0, 0, 0); // (u, v) -> (v, u): column x of the image is row x of the buffer
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(ui.transposed, 0, 0);
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  canvas.dataset.renders = String(++ui.renders);
}

function drawPrompts(drag = null) {
  const canvas = $("prompts");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!ui.image) return;
  const k = 1 / ui.scale; // screen pixel in image pixels
  const s = current();
  const box = drag ? drag : s.box;
  if (box) {
    ctx.lineWidth = 2 * k;
    ctx.setLineDash(drag ? [6 * k, 4 * k] : []);
    ctx.strokeStyle = "#ffd400";
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    ctx.setLineDash([]);
  }
  for (const [x, y, label] of s.points) {
    ctx.beginPath();
    ctx.arc(x, y, 6 * k, 0, 2 * Math.PI);
    ctx.fillStyle = label ? "#19c24a" : "#e8322e";
    ctx.fill();
    ctx.lineWidth = 2 * k;
    ctx.strokeStyle = "#fff";
    ctx.stroke();
  }
}

function updateControls() {
  const s = current();
  const has = !!ui.image;
  $("undo").disabled = !has || ui.at === 0;
  $("redo").disabled = !has || ui.at === ui.history.length - 1;
  $("clear").disabled = !has || (!s.points.length && !s.box);
  $("cycle").disabled = !s.masks || s.masks.length < 2;
  $("predict").disabled = !has;
  $("accept").disabled = !s.masks || !s.masks.length;
  $("export").disabled = ui.annotations.length === 0;
  const m = s.masks && s.masks[s.sel];
  $("candidate").textContent = m ? `${s.sel + 1}/${s.masks.length} · IoU ${m.predicted_iou.toFixed(2)}` : "–";
  $("overlay").classList.toggle("hidden", !ui.overlayVisible);
}

// ------------------------------------------------------------------ mouse
function toImage(e) {
  const r = $("prompts").getBoundingClientRect();
  const x = Math.min(Math.max(((e.clientX - r.left) / r.width) * ui.image.width, 0), ui.image.width);
  const y = Math.min(Math.max(((e.clientY - r.top) / r.height) * ui.image.height, 0), ui.image.height);
  return [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
}

let drag = null;

function onMouseDown(e) {
  if (!ui.image || (e.button !== 0 && e.button !== 2)) return;
  e.preventDefault();
  drag = { sx: e.clientX, sy: e.clientY, p0: toImage(e), button: e.button, shift: e.shiftKey, moved: false, box: null };
}

function onMouseMove(e) {
  if (!drag) return;
  if (drag.button === 0 && Math.hypot(e.clientX - drag.sx, e.clientY - drag.sy) > DRAG_THRESHOLD_PX) drag.moved = true;
  if (drag.moved) {
    const [x, y] = toImage(e);
    const [x0, y0] = drag.p0;
    drag.box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
    drawPrompts(drag.box);
  }
}

function onMouseUp(e) {
  if (!drag) return;
  const d = drag;
  drag = null;
  if (d.moved) {
    const b = d.box;
    if (b && b[2] - b[0] >= 1 && b[3] - b[1] >= 1) addPrompt({ box: b }, e.timeStamp);
    else drawPrompts();
  } else {
    const label = d.button === 2 || d.shift ? 0 : 1;
    addPrompt({ point: [...d.p0, label] }, e.timeStamp);
  }
}

// ------------------------------------------------------------------ labels, accept, predictions
const collectionName = () => $("collection").value.trim() || "default";

async function refreshLabels() {
  const collection = collectionName();
  try {
    const out = await call("GET", `v1/examples?collection=${encodeURIComponent(collection)}&limit=1`);
    const labels = Object.keys(out.counts).sort();
    $("labels").replaceChildren(...labels.map((l) => Object.assign(document.createElement("option"), { value: l })));
    $("counts").replaceChildren(
      ...labels.map((l) => Object.assign(document.createElement("span"), { textContent: `${l} ${out.counts[l]}` })),
      Object.assign(document.createElement("span"), { textContent: `(${out.total} examples in “${collection}”)` }),
    );
    $("counts").dataset.total = String(out.total);
  } catch (e) {
    if (e.code !== "unknown_collection") throw e;
    $("labels").replaceChildren();
    $("counts").textContent = `No examples in “${collection}” yet: accept a mask with a label.`;
    $("counts").dataset.total = "0";
  }
}

async function storeExample(rle, label, collection) {
  return callWithImage("v1/examples", { mask_rle: { size: rle.size, counts: rle.counts }, label, collection });
}

async function acceptCurrent() {
  if (!ui.image) return;
  await ui.queue; // the last prompt's mask first
  const s = current();
  const m = s.masks && s.masks[s.sel];
  if (!m) {
    setStatus("no mask yet: click on an object first");
    return;
  }
  const label = $("label").value.trim();
  if (!label) {
    $("label").focus();
    setStatus("type a label, then Enter");
    return;
  }
  hideError();
  setBusy(+1, `storing “${label}”…`);
  try {
    const out = await storeExample(m.rle, label, collectionName());
    ui.annotations.push({ image: ui.image.id, label: out.label, rle: m.rle, bbox_xyxy: m.bbox_xyxy, area_px: m.area_px, example_id: out.ids[0], collection: out.collection, source: "prompt" });
    $("label").value = "";
    $("label").blur();
    resetHistory();
    renderAnnotations();
    render();
    await refreshLabels();
    setStatus(`“${out.label}” stored as an example; click on the next object`);
  } catch (e) {
    showError(e);
  } finally {
    setBusy(-1);
  }
}

async function predict() {
  if (!ui.image) return;
  hideError();
  const collection = collectionName();
  const image = ui.image;
  setBusy(+1, "predicting: automatic masks over the whole image (slow on CPU)…");
  try {
    const t0 = performance.now();
    const out = await callWithImage("v1/predict", { collection, mask_format: "rle" });
    if (ui.image !== image) return;
    ui.predictions = out.instances.map((inst, i) => ({ ...inst, color: PALETTE[i % PALETTE.length], state: "open", collection }));
    renderPredictions();
    render();
    setStatus(`${ui.predictions.length} instances in ${((performance.now() - t0) / 1e3).toFixed(1)} s`);
  } catch (e) {
    showError(e);
  } finally {
    setBusy(-1);
  }
}

/** Accept a prediction as labelled, or, when its label was edited (or it had none), correct it: the
 *  corrected label is stored as a new example. Both add it to the session's annotations. */
async function resolvePrediction(p, label) {
  if (p.state !== "open") return;
  label = label.trim();
  if (!label) {
    setStatus("type a label for this instance first");
    return;
  }
  hideError();
  const corrected = label !== p.label;
  setBusy(+1, corrected ? `storing the correction “${label}”…` : `accepting “${label}”…`);
  try {
    let exampleId = null;
    if (corrected) exampleId = (await storeExample(p.rle, label, p.collection)).ids[0];
    p.state = corrected ? "corrected" : "accepted";
    ui.annotations.push({ image: ui.image.id, label, rle: p.rle, bbox_xyxy: p.bbox_xyxy, area_px: p.area_px, example_id: exampleId, collection: p.collection, source: p.state });
    renderPredictions();
    renderAnnotations();
    render();
    if (corrected) await refreshLabels();
    setStatus(`${p.state} “${label}”`);
  } catch (e) {
    showError(e);
  } finally {
    setBusy(-1);
  }
}

function swatch(color) {
  const s = document.createElement("span");
  s.className = "swatch";
  s.style.background = `rgb(${color.join(",")})`;
  return s;
}

function renderPredictions() {
  const open = ui.predictions.filter((p) => p.state === "open").length;
  $("predict-count").textContent = ui.predictions.length ? `${open} open of ${ui.predictions.length}` : "";
  $("instances").replaceChildren(
    ...ui.predictions.map((p, i) => {
      const li = document.createElement("li");
      li.dataset.state = p.state;
      li.dataset.index = String(i);
      li.classList.toggle("done", p.state !== "open");
      const input = Object.assign(document.createElement("input"), { value: p.label ?? "", placeholder: "label?", disabled: p.state !== "open" });
      input.setAttribute("list", "labels");
      input.title = "suggested label; edit it to correct";
      const conf = Object.assign(document.createElement("span"), {
        className: "conf",
        textContent: p.label === null ? "no vote" : `${(p.confidence * 100).toFixed(0)}%`,
        title: (p.neighbors || []).map((n) => `${n.label} ${n.score.toFixed(3)}`).join("\n"),
      });
      const button = Object.assign(document.createElement("button"), { disabled: p.state !== "open" });
      const setButton = () => {
        button.textContent = p.state !== "open" ? `✓ ${p.state}` : input.value.trim() === (p.label ?? "") && p.label !== null ? "Accept" : "Correct";
      };
      setButton();
      input.addEventListener("input", setButton);
      input.addEventListener("keydown", (e) => {
        if (e.key === "Enter") {
          e.preventDefault();
          resolvePrediction(p, input.value);
        }
      });
      button.addEventListener("click", () => resolvePrediction(p, input.value));
      li.append(swatch(p.color), input, conf, button);
      return li;
    }),
  );
}

function renderAnnotations() {
  $("annotation-count").textContent = String(ui.annotations.length);
  $("annotations").replaceChildren(
    ...ui.annotations.map((a, i) => {
      const li = document.createElement("li");
      const im = ui.images.find((x) => x.id === a.image);
      const text = Object.assign(document.createElement("span"), { textContent: `${a.label} · ${a.area_px} px · ${im ? im.file_name : ""}` });
      text.style.flex = "1";
      const remove = Object.assign(document.createElement("button"), {
        textContent: "×",
        title: a.example_id ? "remove from the export and delete its example" : "remove from the export",
      });
      remove.addEventListener("click", () => removeAnnotation(i));
      li.append(swatch(CURRENT_COLOR), text, remove);
      return li;
    }),
  );
  updateControls();
}

async function removeAnnotation(i) {
  const a = ui.annotations[i];
  hideError();
  try {
    if (a.example_id) {
      const collection = a.collection;
      await call("DELETE", `v1/examples/${encodeURIComponent(a.example_id)}?collection=${encodeURIComponent(collection)}`);
    }
    ui.annotations.splice(ui.annotations.indexOf(a), 1);
    renderAnnotations();
    await refreshLabels();
  } catch (e) {
    showError(e);
  }
}

function exportCoco() {
  if (!ui.annotations.length) {
    setStatus("nothing to export yet: accept a mask or a prediction first");
    return;
  }
  const used = new Set(ui.annotations.map((a) => a.image));
  const data = cocoDataset(ui.images.filter((im) => used.has(im.id)), ui.annotations);
  const blob = new Blob([JSON.stringify(data)], { type: "application/json" });
  const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: "samgraph-coco.json" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
  setStatus(`exported ${data.annotations.length} annotations on ${data.images.length} image(s)`);
}

// ------------------------------------------------------------------ keyboard
function onKeyDown(e) {
  const typing = e.target.matches("input, select, textarea");
  if (e.key === "Escape") {
    if (typing) e.target.blur();
    else clearPrompts();
    return;
  }
  if (typing || (e.target.matches("button") && (e.key === "Enter" || e.key === " "))) return;
  const k = e.key.toLowerCase();
  if ((e.ctrlKey || e.metaKey) && k === "z") {
    e.preventDefault();
    if (e.shiftKey) redo();
    else undo();
  } else if ((e.ctrlKey || e.metaKey) && k === "y") {
    e.preventDefault();
    redo();
  } else if (e.ctrlKey || e.metaKey || e.altKey) {
    return;
  } else if (e.key === "Enter") {
    e.preventDefault();
    acceptCurrent();
  } else if (k === "c") {
    cycle(e.shiftKey ? -1 : 1);
  } else if (k === "l") {
    e.preventDefault();
    $("label").focus();
  } else if (k === "p") {
    predict();
  } else if (k === "a") {
    const p = ui.predictions.find((x) => x.state === "open" && x.label !== null);
    if (p) resolvePrediction(p, p.label);
  } else if (k === "v") {
    ui.overlayVisible = !ui.overlayVisible;
    updateControls();
  } else if (k === "e") {
    exportCoco();
  } else if (k === "o") {
    $("file").click();
  }
}

// ------------------------------------------------------------------ wiring
function init() {
  $("file").addEventListener("change", (e) => {
    openImage(e.target.files[0]);
    e.target.value = "";
  });
  const viewer = $("viewer");
  document.addEventListener("dragover", (e) => e.preventDefault()); // a drop outside the viewer must not navigate away
  document.addEventListener("drop", (e) => e.preventDefault());
  viewer.addEventListener("dragover", (e) => {
    e.preventDefault();
    viewer.classList.add("dragover");
  });
  viewer.addEventListener("dragleave", () => viewer.classList.remove("dragover"));
  viewer.addEventListener("drop", (e) => {
    e.preventDefault();
    viewer.classList.remove("dragover");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) openImage(file);
  });
  const canvas = $("prompts");
  canvas.addEventListener("mousedown", onMouseDown);
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  window.addEventListener("mousemove", onMouseMove);
  window.addEventListener("mouseup", onMouseUp);
  window.addEventListener("resize", () => {
    layout();
    render();
  });
  document.addEventListener("keydown", onKeyDown);
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("clear").addEventListener("click", clearPrompts);
  $("cycle").addEventListener("click", () => cycle(1));
  $("predict").addEventListener("click", predict);
  $("export").addEventListener("click", exportCoco);
  $("error-close").addEventListener("click", hideError);
  $("accept-form").addEventListener("submit", (e) => {
    e.preventDefault();
    acceptCurrent();
  });
  $("collection").addEventListener("change", () => refreshLabels().catch(showError));
  window.addEventListener("error", (e) => showError(e.error || e.message));
  window.addEventListener("unhandledrejection", (e) => showError(e.reason));
  render();
  refreshLabels().catch(showError);
  checkReady().catch(showError);
}

/** The models behind the service (and its warnings, e.g. random weights) from /readyz. */
async function checkReady() {
  let out;
  try {
    out = await call("GET", "readyz");
  } catch (e) {
    if (e.status === 503) throw new ShownError("not_ready", `the service is not ready yet: ${e.message}`, { status: 503, where: e.where });
    throw e;
  }
  document.querySelector("header strong").title = `${out.model_id} (${out.weights}) on ${out.device}; embedder ${out.embedder.model_id} (${out.embedder.weights})`;
}

init();
