// The collection and the session's annotations: label completion and counts of the collection
// (#labels, #counts; #counts[data-total] is set once known, which the browser tests wait on),
// accepting the current mask with a label (stored as an example), the list of annotations (× removes
// one and deletes its example), and the COCO JSON export of them all (RLE, or polygons traced by the
// service).

import { $, el, swatch } from "./dom.js";
import { deleteExample, getExampleCounts, postExample, postPolygons } from "./api.js";
import { CURRENT_COLOR, render, updateControls } from "./overlay.js";
import { chosenMask, resetHistory, ui } from "./state.js";
import { hideError, setBusy, setStatus, showError } from "./status.js";
import { cocoDataset } from "./rle.js";

const POLYGONS_PER_CALL = 256; // the most masks /v1/masks/polygons takes at once

/** The collection named in #collection. */
export const collectionName = () => $("collection").value.trim() || "default";

/** Fill the label completions and the counts from the collection's examples. */
export async function refreshLabels() {
  const collection = collectionName();
  try {
    const out = await getExampleCounts(collection);
    const labels = Object.keys(out.counts).sort();
    $("labels").replaceChildren(...labels.map((l) => el("option", { value: l })));
    $("counts").replaceChildren(
      ...labels.map((l) => el("span", { textContent: `${l} ${out.counts[l]}` })),
      el("span", { textContent: `(${out.total} examples in “${collection}”)` }),
    );
    $("counts").dataset.total = String(out.total);
  } catch (e) {
    if (e.code !== "unknown_collection") throw e;
    $("labels").replaceChildren();
    $("counts").textContent = `No examples in “${collection}” yet: accept a mask with a label.`;
    $("counts").dataset.total = "0";
  }
}

/** Add ``mask`` ({rle, bbox_xyxy, area_px}) of the current image to the annotations and list it.
 *  source: "prompt", "accepted", "corrected" or "text" (a text prompt's candidate); exampleId: its stored example, or null. */
export function addAnnotation(mask, { label, exampleId, collection, source }) {
  const { rle, bbox_xyxy, area_px } = mask;
  ui.annotations.push({ image: ui.image.id, label, rle, bbox_xyxy, area_px, example_id: exampleId, collection, source });
  renderAnnotations();
}

/** Store the chosen mask as an example with #label's text, once the last prompt is answered. */
export async function acceptCurrent() {
  if (!ui.image) return;
  await ui.queue; // the last prompt's mask first
  const m = chosenMask();
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
    const out = await postExample(m.rle, label, collectionName());
    addAnnotation(m, { label: out.label, exampleId: out.ids[0], collection: out.collection, source: "prompt" });
    $("label").value = "";
    $("label").blur();
    resetHistory();
    render();
    await refreshLabels();
    setStatus(`“${out.label}” stored as an example; click on the next object`);
  } catch (e) {
    showError(e);
  } finally {
    setBusy(-1);
  }
}

function renderAnnotations() {
  $("annotation-count").textContent = String(ui.annotations.length);
  $("annotations").replaceChildren(
    ...ui.annotations.map((a, i) => {
      const im = ui.images.find((x) => x.id === a.image);
      const text = el("span", { textContent: `${a.label} · ${a.area_px} px · ${im ? im.file_name : ""}` });
      text.style.flex = "1";
      const remove = el("button", {
        textContent: "×",
        title: a.example_id ? "remove from the export and delete its example" : "remove from the export",
      });
      remove.addEventListener("click", () => removeAnnotation(i));
      const li = el("li");
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
    if (a.example_id) await deleteExample(a.example_id, a.collection);
    ui.annotations.splice(ui.annotations.indexOf(a), 1);
    renderAnnotations();
    await refreshLabels();
  } catch (e) {
    showError(e);
  }
}

/** Per annotation, its exact outline as COCO's flat polygon lists, traced by the service; null for a mask
 * with holes, which COCO polygons cannot hold (it stays RLE). */
async function polygonSegmentations(annotations) {
  const out = [];
  for (let i = 0; i < annotations.length; i += POLYGONS_PER_CALL) {
    const chunk = annotations.slice(i, i + POLYGONS_PER_CALL);
    const { masks } = await postPolygons(chunk.map((a) => a.rle), 0);
    for (const m of masks) out.push(m.polygons.some((p) => p.holes.length) ? null : m.segmentation);
  }
  return out;
}

/** Download the annotations, with the images they are on, as samgraph-coco.json: masks as RLE, or, with
 * the export format "polygons", as polygons (masks with holes stay RLE). */
export async function exportCoco() {
  if (!ui.annotations.length) {
    setStatus("nothing to export yet: accept a mask or a prediction first");
    return;
  }
  let polygons = [];
  if ($("export-format").value === "polygon") {
    try {
      polygons = await polygonSegmentations(ui.annotations);
    } catch (e) {
      showError(e);
      return;
    }
  }
  const used = new Set(ui.annotations.map((a) => a.image));
  const data = cocoDataset(ui.images.filter((im) => used.has(im.id)), ui.annotations, polygons);
  const blob = new Blob([JSON.stringify(data)], { type: "application/json" });
  const a = el("a", { href: URL.createObjectURL(blob), download: "samgraph-coco.json" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
  const kept = polygons.filter((p) => p === null).length;
  const note = kept ? ` (${kept} with holes kept as RLE)` : "";
  setStatus(`exported ${data.annotations.length} annotations on ${data.images.length} image(s)${note}`);
}
