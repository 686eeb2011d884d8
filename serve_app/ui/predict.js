// Predictions: POST v1/predict finds every object of the image and suggests a label for each from the
// collection's examples. Each instance is listed (#instances) with its colour, its label (editable),
// its confidence and a button: "Accept" keeps the suggested label, "Correct" (the label was edited, or
// there was none) stores the new label as an example. Either way the instance joins the annotations.
// A list item's data-state is "open", "accepted" or "corrected".

import { $, el, swatch } from "./dom.js";
import { postExample, postPredict } from "./api.js";
import { addAnnotation, collectionName, refreshLabels } from "./annotations.js";
import { PALETTE, render } from "./overlay.js";
import { can, modelId, ui } from "./state.js";
import { hideError, setBusy, setStatus, showError } from "./status.js";

export async function predict() {
  if (!ui.image) return;
  if (!can("automatic_masks")) {
    setStatus(`${modelId()} makes no automatic masks: nothing to predict`);
    return;
  }
  hideError();
  const collection = collectionName();
  const image = ui.image;
  setBusy(+1, "predicting: automatic masks over the whole image (slow on CPU)…");
  try {
    const t0 = performance.now();
    const out = await postPredict(collection);
    if (ui.image !== image) return; // another image was opened meanwhile
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

/** Accept prediction ``p`` as labelled, or, when ``label`` differs from its label (or it had none),
 *  correct it: the corrected label is stored as a new example. Both add it to the annotations. */
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
    if (corrected) exampleId = (await postExample(p.rle, label, p.collection)).ids[0];
    p.state = corrected ? "corrected" : "accepted";
    renderPredictions();
    addAnnotation(p, { label, exampleId, collection: p.collection, source: p.state });
    render();
    if (corrected) await refreshLabels();
    setStatus(`${p.state} “${label}”`);
  } catch (e) {
    showError(e);
  } finally {
    setBusy(-1);
  }
}

/** Accept the first open prediction that has a suggested label (key A). */
export function acceptFirstSuggestion() {
  const p = ui.predictions.find((x) => x.state === "open" && x.label !== null);
  if (p) resolvePrediction(p, p.label);
}

/** The list item of prediction ``p`` (the ``i``-th). */
function predictionItem(p, i) {
  const open = p.state === "open";
  const input = el("input", { value: p.label ?? "", placeholder: "label?", disabled: !open, title: "suggested label; edit it to correct" });
  input.setAttribute("list", "labels");
  const conf = el("span", {
    className: "conf",
    textContent: p.label === null ? "no vote" : `${(p.confidence * 100).toFixed(0)}%`,
    title: (p.neighbors || []).map((n) => `${n.label} ${n.score.toFixed(3)}`).join("\n"),
  });
  const button = el("button", { disabled: !open });
  const setButton = () => {
    const unchanged = input.value.trim() === (p.label ?? "") && p.label !== null;
    button.textContent = p.state !== "open" ? `✓ ${p.state}` : unchanged ? "Accept" : "Correct";
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
  const li = el("li");
  li.dataset.state = p.state;
  li.dataset.index = String(i);
  li.classList.toggle("done", !open);
  li.append(swatch(p.color), input, conf, button);
  return li;
}

export function renderPredictions() {
  const open = ui.predictions.filter((p) => p.state === "open").length;
  $("predict-count").textContent = ui.predictions.length ? `${open} open of ${ui.predictions.length}` : "";
  $("instances").replaceChildren(...ui.predictions.map(predictionItem));
}
