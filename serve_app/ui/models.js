// The model picker (#model): filled from GET v1/models at load, the service's default chosen. Each option
// shows the model's id and family, and "random weights" when it has them (the chosen model's random
// weights also go to the warnings banner); #model-info says what the chosen model can do and where it runs. Every call about an image carries the chosen model_id (api.js);
// the controls follow its capabilities (overlay.js updateControls). Choosing another model with an image
// open sends the image to be encoded by it (its features are cached per model) and starts a new object:
// an earlier mask's low_res_logits belong to the model that made them.
// #model[data-model-id] is the chosen model (the browser tests wait on it).

import { $, el } from "./dom.js";
import { getModels, uploadImage } from "./api.js";
import { render } from "./overlay.js";
import { resetHistory, ui } from "./state.js";
import { hideError, setBusy, setModelWarning, setStatus, showError } from "./status.js";

/** The option text of a /v1/models entry: "id (family)", and a mark for random weights. */
export function modelLabel(m) {
  const family = m.family ? ` (${m.family})` : "";
  return `${m.model_id}${family}${m.weights === "random" ? " ⚠ random weights" : ""}`;
}

/** What a /v1/models entry can do and where it runs, one line each. */
function modelInfo(m) {
  const caps = Object.entries(m.capabilities || {}).filter(([, on]) => on).map(([k]) => k.replaceAll("_", " "));
  const lines = [`${m.family || "unknown family"} · can: ${caps.join(", ") || "nothing listed"}`];
  const size = [m.params_m ? `${m.params_m} M parameters` : null, m.image_size ? `${m.image_size} px input` : null];
  if (m.devices) size.push(`on ${[...new Set(Object.values(m.devices))].join(", ")}`);
  if (m.feature_bytes) size.push(`${(m.feature_bytes / 2 ** 20).toFixed(1)} MiB per cached image`);
  lines.push(size.filter(Boolean).join(" · "));
  lines.push(`weights ${m.weights}`);
  return lines;
}

/** Make ``m`` (a /v1/models entry) the chosen model: its warning, its tooltip, the controls it allows. */
function choose(m) {
  ui.model = m;
  const select = $("model");
  select.value = m.model_id;
  const info = modelInfo(m);
  $("model-info").textContent = info.slice(0, 2).join("\n");
  select.title = info.join("\n");
  select.dataset.modelId = m.model_id;
  setModelWarning(m.weights === "random" ? `${m.model_id}: random weights, its masks are meaningless` : null);
  render();
}

/** Fill the picker from GET v1/models and choose the service's default. On failure the picker offers
 *  only "default" and requests leave model_id out. */
export async function loadModels() {
  const select = $("model");
  try {
    const out = await getModels();
    ui.models = out.models;
    select.replaceChildren(...out.models.map((m) => el("option", { value: m.model_id, textContent: modelLabel(m) })));
    select.disabled = false;
    choose(out.models.find((m) => m.model_id === out.default) || out.models[0]);
  } catch (e) {
    select.replaceChildren(el("option", { value: "", textContent: "default" }));
    select.disabled = true;
    throw e;
  }
}

/** #model's change: choose the model; an open image is sent to be encoded by it (after any prompt still
 *  waiting for its answer). */
export function onModelChange() {
  const m = ui.models.find((x) => x.model_id === $("model").value);
  if (!m || m === ui.model) return;
  choose(m);
  if (!ui.image) {
    setStatus(`model ${m.model_id}`);
    return;
  }
  resetHistory();
  render();
  const file = ui.file;
  ui.queue = ui.queue.then(() => encodeOn(m, file));
}

async function encodeOn(m, file) {
  if (ui.model !== m || ui.file !== file) return; // another model or image was chosen meanwhile
  hideError();
  setBusy(+1, `encoding the image with ${m.model_id}…`);
  try {
    const t0 = performance.now();
    const out = await uploadImage(file);
    const ms = (performance.now() - t0).toFixed(0);
    setStatus(`${m.model_id}: ${out.encode_cached ? "already encoded" : "encoded"} (${ms} ms). Click on an object.`);
  } catch (e) {
    showError(e);
  } finally {
    setBusy(-1);
  }
}
