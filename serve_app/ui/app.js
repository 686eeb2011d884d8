// samgraph annotation page: the entry module, which wires the page's events to the modules below.
// Plain ES modules, no build step, nothing loaded from anywhere but the ingress.
//
//   api.js          the service's HTTP API (the endpoints the page uses are listed there)
//   state.js        the session's data, the chosen model and the undo/redo history of the prompts
//   models.js       the model picker: GET v1/models, the chosen model_id, re-encoding on a change
//   status.js       the status line, busy flag, error and warnings banners; ShownError
//   overlay.js      drawing the masks and prompts, the stage's layout, the header controls
//   prompts.js      mouse prompts, /v1/segment requests, undo/redo/clear/candidates
//   image.js        opening an image
//   annotations.js  labels of the collection, accepting a mask, the annotations, the COCO export
//   predict.js      /v1/predict and accepting or correcting its suggestions
//   find.js         the text prompt: every instance found (or CLIP-ranked masks), to accept or reject
//   keyboard.js     the shortcuts
//   rle.js          COCO RLE decoding and the COCO dataset
//   dom.js          small DOM helpers
// Masks travel as COCO RLE (a few kB per mask) and are decoded here; accepted masks go back to the
// API and into the COCO export as the same RLE, with no re-encoding.

import { $ } from "./dom.js";
import { getReady } from "./api.js";
import { acceptCurrent, exportCoco, refreshLabels } from "./annotations.js";
import { findText } from "./find.js";
import { openImage } from "./image.js";
import { onKeyDown } from "./keyboard.js";
import { loadModels, onModelChange } from "./models.js";
import { layout, render } from "./overlay.js";
import { predict } from "./predict.js";
import { clearPrompts, cycle, onMouseDown, onMouseMove, onMouseUp, redo, undo } from "./prompts.js";
import { hideError, showError, ShownError } from "./status.js";

/** The file input and drag and drop onto the viewer open an image. */
function wireImageInputs() {
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
}

function init() {
  wireImageInputs();
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
  $("model").addEventListener("change", onModelChange);
  $("text-form").addEventListener("submit", (e) => {
    e.preventDefault();
    findText();
  });
  window.addEventListener("error", (e) => showError(e.error || e.message));
  window.addEventListener("unhandledrejection", (e) => showError(e.reason));
  render();
  refreshLabels().catch(showError);
  loadModels().catch(showError);
  checkReady().catch(showError);
}

/** The stages behind the service (and its warnings, e.g. random weights) from /readyz. */
async function checkReady() {
  let out;
  try {
    out = await getReady();
  } catch (e) {
    if (e.status === 503) throw new ShownError("not_ready", `the service is not ready yet: ${e.message}`, { status: 503, where: e.where });
    throw e;
  }
  document.querySelector("header strong").title = `${out.model_id} (${out.weights}) on ${out.device}; embedder ${out.embedder.model_id} (${out.embedder.weights})`;
}

init();
