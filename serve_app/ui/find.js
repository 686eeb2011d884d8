// The text prompt (#text-form): POST v1/segment with {prompts: [{text}], score_thresh} finds every
// instance of a phrase. A model with concept prompts (SAM 3) answers them all ("text_method": "concept":
// instances with their score, those at or above #score-thresh); another model answers its automatic
// masks ranked by CLIP similarity to the text ("clip_rank": masks with their text_score, the best 3).
// Either way each candidate is drawn and listed (#found) with its score, a label (the text, editable),
// ✓ to accept it, which stores it as an example and adds it to the annotations as an accepted click's
// mask is, and × to reject it, which takes it off the list and the overlay. #text-method says which
// method answered (data-method); a list item's data-state is "open" or "accepted".

import { $, el, swatch } from "./dom.js";
import { postExample, postSegment } from "./api.js";
import { addAnnotation, collectionName, refreshLabels } from "./annotations.js";
import { PALETTE, render } from "./overlay.js";
import { can, modelId, ui } from "./state.js";
import { hideError, setBusy, setStatus, showError } from "./status.js";

/** The candidates of one /v1/segment text result, best first: {rle, bbox_xyxy, area_px, score, scoreKind}.
 *  ``result``: {text_method: "concept", instances: [{score, …}]} or {text_method: "clip_rank", masks:
 *  [{text_score, …}]}; score is the concept score in [0, 1], or the CLIP cosine similarity in [-1, 1]. */
export function textCandidates(result) {
  if (result.text_method === "concept") {
    return (result.instances || []).map((m) => ({ rle: m.rle, bbox_xyxy: m.bbox_xyxy, area_px: m.area_px, score: m.score, scoreKind: "concept" }));
  }
  return (result.masks || []).map((m) => ({ rle: m.rle, bbox_xyxy: m.bbox_xyxy, area_px: m.area_px, score: m.text_score, scoreKind: "clip" }));
}

/** A candidate's score as listed: 2 decimals for a concept score, 3 for a CLIP cosine. */
export const scoreText = (c) => (typeof c.score !== "number" ? "–" : c.score.toFixed(c.scoreKind === "concept" ? 2 : 3));

/** What #text-method says about an answer of ``modelId`` to ``text`` (``count`` candidates). */
function methodText(method, text, model, count, scoreThresh) {
  const who = model ? `${model}: ` : "";
  if (method === "concept") {
    return `${who}concept segmentation found ${count} instance(s) of “${text}” with score ≥ ${scoreThresh}`;
  }
  return `${who}no concept prompts, so its automatic masks ranked by CLIP similarity to “${text}” (best ${count})`;
}

/** Show ``result`` (one /v1/segment text result, see textCandidates) as the current image's candidates:
 *  listed with their scores and drawn, each to accept or reject. The text is each one's label. */
export function showTextAnswer(result, { text, model = modelId(), scoreThresh = 0.5 }) {
  ui.found = textCandidates(result).map((c, i) => ({ ...c, label: text, color: PALETTE[i % PALETTE.length], state: "open" }));
  const method = result.text_method;
  $("text-method").textContent = methodText(method, text, model, ui.found.length, scoreThresh);
  $("text-method").dataset.method = method;
  renderFound();
  render();
}

/** Forget the candidates (a new image). */
export function clearFound() {
  ui.found = [];
  $("text-method").textContent = "";
  delete $("text-method").dataset.method;
  renderFound();
}

/** #text-form's submit: send the text, show what the model found. */
export async function findText() {
  const text = $("text").value.trim();
  if (!ui.image) {
    setStatus("open an image first");
    return;
  }
  if (!text) {
    $("text").focus();
    setStatus("type what to find, then Enter");
    return;
  }
  const scoreThresh = Number($("score-thresh").value) || 0;
  const image = ui.image;
  const model = modelId();
  hideError();
  const how = can("concept_prompts") ? "every instance" : "automatic masks ranked by CLIP";
  setBusy(+1, `finding “${text}” (${how})…`);
  try {
    const t0 = performance.now();
    const out = await postSegment({ prompts: [{ text }], score_thresh: scoreThresh, mask_format: "rle", max_masks: 3 });
    if (ui.image !== image) return; // another image was opened meanwhile
    showTextAnswer(out.results[0], { text, model: out.model_id || model, scoreThresh });
    setStatus(`${ui.found.length} candidate(s) for “${text}” in ${((performance.now() - t0) / 1e3).toFixed(1)} s`);
  } catch (e) {
    showError(e);
  } finally {
    setBusy(-1);
  }
}

/** Accept candidate ``c`` with ``label``: stored as an example and added to the annotations. */
async function acceptFound(c, label) {
  if (c.state !== "open") return;
  label = label.trim();
  if (!label) {
    setStatus("type a label for this candidate first");
    return;
  }
  hideError();
  setBusy(+1, `storing “${label}”…`);
  try {
    const out = await postExample(c.rle, label, collectionName());
    c.state = "accepted";
    c.label = out.label;
    addAnnotation(c, { label: out.label, exampleId: out.ids[0], collection: out.collection, source: "text" });
    renderFound();
    render();
    await refreshLabels();
    setStatus(`“${out.label}” stored as an example`);
  } catch (e) {
    showError(e);
  } finally {
    setBusy(-1);
  }
}

/** Reject candidate ``c``: off the list and the overlay. */
function rejectFound(c) {
  ui.found = ui.found.filter((x) => x !== c);
  renderFound();
  render();
}

/** The list item of candidate ``c`` (the ``i``-th). */
function foundItem(c, i) {
  const open = c.state === "open";
  const input = el("input", { value: c.label, placeholder: "label?", disabled: !open, title: "the label it is stored with" });
  input.setAttribute("list", "labels");
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      acceptFound(c, input.value);
    }
  });
  const score = el("span", {
    className: "conf",
    textContent: scoreText(c),
    title: c.scoreKind === "concept" ? "the model's score for this instance" : "CLIP cosine similarity of its crop and the text",
  });
  const accept = el("button", { className: "accept", textContent: open ? "✓" : "✓ accepted", disabled: !open, title: "accept: store it as an example with this label" });
  accept.addEventListener("click", () => acceptFound(c, input.value));
  const li = el("li");
  li.dataset.state = c.state;
  li.dataset.index = String(i);
  li.classList.toggle("done", !open);
  li.append(swatch(c.color), input, score, accept);
  if (open) {
    const reject = el("button", { className: "reject", textContent: "×", title: "reject: not an instance" });
    reject.addEventListener("click", () => rejectFound(c));
    li.append(reject);
  }
  return li;
}

export function renderFound() {
  const open = ui.found.filter((c) => c.state === "open").length;
  $("found-count").textContent = ui.found.length ? `${open} open of ${ui.found.length}` : "";
  $("found").replaceChildren(...ui.found.map(foundItem));
}
