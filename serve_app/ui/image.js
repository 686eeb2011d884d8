// Opening an image (the file input, a drop, key O): its bytes go to the service once, to be encoded by the
// chosen model;
// every prompt after that names it by image_id. The image is decoded in the browser before it replaces
// the current one, so that a failure leaves the page as it was. Reopening an image of the session keeps
// its export id. #stage[data-image-id] is the image on screen.

import { $ } from "./dom.js";
import { uploadImage } from "./api.js";
import { layout, render } from "./overlay.js";
import { clearFound } from "./find.js";
import { renderPredictions } from "./predict.js";
import { resetHistory, ui } from "./state.js";
import { hideError, setBusy, setStatus, showError, ShownError } from "./status.js";

let photoUrl = null; // the object URL of the image on screen

/** The session's entry for an image the service answered with ``out``; a new one the first time. */
function sessionImage(out, file) {
  let image = ui.images.find((im) => im.image_id === out.image_id);
  if (!image) {
    const id = ui.images.length + 1;
    image = { id, image_id: out.image_id, width: out.width, height: out.height, file_name: file.name || `image-${id}` };
    ui.images.push(image);
  }
  return image;
}

/** Show ``url`` in #photo once the browser has decoded it; revoke it if it cannot. */
async function showPhoto(url) {
  const probe = new Image();
  probe.src = url;
  try {
    await probe.decode();
  } catch {
    URL.revokeObjectURL(url);
    throw new ShownError("undisplayable_image", "the service read the image, but this browser cannot display its format");
  }
  $("photo").src = url;
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = url;
}

export async function openImage(file) {
  if (!file) return;
  hideError();
  setBusy(+1, `sending ${file.name || "the image"} (it is encoded once)…`);
  try {
    const t0 = performance.now();
    const out = await uploadImage(file);
    await showPhoto(URL.createObjectURL(file));
    const image = sessionImage(out, file);
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
    clearFound();
    render();
    const ms = (performance.now() - t0).toFixed(0);
    setStatus(`${image.file_name}: ${image.width}×${image.height}, ${out.encode_cached ? "already encoded" : "encoded"} (${ms} ms). Click on an object.`);
  } catch (e) {
    showError(e);
  } finally {
    setBusy(-1);
  }
}
