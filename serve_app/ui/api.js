// The service's public API, relative to the ingress root (so the page works under any route prefix):
//   GET    v1/models           the served models, their capabilities and weights (the model picker);
//   POST   v1/segment          the image once (multipart, mask_format "none"), then every prompt by
//                              image_id with return_logits, the chosen mask's low_res_logits going back
//                              as mask_input; a text prompt (every instance of a concept, or the
//                              automatic masks ranked by CLIP);
//   POST   v1/examples         an accepted mask (mask_rle) with its label;
//   GET    v1/examples         labels and counts of a collection (label completion);
//   DELETE v1/examples/{id}    an example removed with its annotation;
//   POST   v1/predict          every object with its suggested label;
//   POST   v1/masks/polygons   accepted masks traced as polygons, for a COCO export with polygons;
//   GET    readyz              the models behind the service, and its warnings.
// Every call about an image (v1/segment, v1/predict, v1/examples) carries the chosen model's model_id; the
// service caches an image's features per (model, image), so the first call on another model re-encodes.
// Masks travel as COCO RLE both ways. Every failure is thrown as a ShownError: the API's own
// {error: {code, message, field, request_id}}, else http_<status>, network or bad_response.
// Warnings in any answer go to the warnings banner.
// A service with API keys answers 401 to a call without a good key: the page asks for the key once, keeps
// it in sessionStorage (this tab only, gone when it closes) and sends it as "Authorization: Bearer <key>"
// on every call; /readyz needs none.

import { modelId, ui } from "./state.js";
import { ShownError, setStatus, showWarnings } from "./status.js";

const API_ROOT = new URL("../", window.location.href); // the page is at <root>/ui/
const KEY_ITEM = "samgraph.api_key";

function storedKey() {
  try {
    return window.sessionStorage.getItem(KEY_ITEM) || "";
  } catch {
    return ""; // storage blocked: the key is asked for again
  }
}

/** Ask for the API key; true when one was entered (and kept for the session). */
function askForKey(rejected) {
  const entered = window.prompt(
    rejected ? "The API key was not accepted. API key:" : "This service needs an API key (kept for this tab only). API key:"
  );
  if (!entered || !entered.trim()) return false;
  try {
    window.sessionStorage.setItem(KEY_ITEM, entered.trim());
  } catch {
    return false;
  }
  return true;
}

/** ``method`` ``path`` with a JSON body (``json``) or a multipart one (``form``); the answer's JSON. On a
 * 401, asks for the API key once (unless another call got one meanwhile) and sends the call again with it. */
async function call(method, path, { json, form } = {}, asked = false) {
  const url = new URL(path, API_ROOT);
  const init = { method, headers: {} };
  const key = storedKey();
  if (key) init.headers.authorization = `Bearer ${key}`;
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
  if (res.status === 401 && !asked) {
    // Calls sent together (the listing and the model picker at load) share one question: a key entered
    // since this call left is tried first, unasked.
    const entered = storedKey();
    if ((entered && entered !== key) || askForKey(Boolean(key))) return call(method, path, { json, form }, true);
  }
  if (!res.ok) {
    const err = data && data.error ? data.error : { code: `http_${res.status}`, message: (data && data.reason) || text.slice(0, 300) || res.statusText };
    throw new ShownError(err.code, err.message, { status: res.status, field: err.field, requestId: err.request_id, where });
  }
  if (data === null) throw new ShownError("bad_response", "the answer is not JSON", { status: res.status, where });
  if (data.warnings) showWarnings(data.warnings);
  return data;
}

/** ``body`` with the chosen model's model_id (none before the models are known: the default model). */
function withModel(body) {
  const id = modelId();
  return id ? { ...body, model_id: id } : body;
}

/** POST ``path`` with the current image_id and the chosen model. If the service no longer holds the image (evicted, or its
 * decoder replica is gone), send the same body once more with the file and its image_id together
 * (resend on miss): the image's new owner encodes it again and answers (``encode_cached: false``). */
async function callWithImage(path, body) {
  const image = ui.image;
  const json = withModel({ ...body, image_id: image.image_id });
  try {
    return await call("POST", path, { json });
  } catch (e) {
    if (e.code !== "image_not_cached" || !ui.file) throw e;
    setStatus("the service no longer held the image; sending it again with the request…");
    const form = new FormData();
    form.append("image", ui.file, ui.file.name || "image");
    form.append("request", JSON.stringify(json));
    return call("POST", path, { form });
  }
}

/** Send the image's bytes, to be encoded once by the chosen model; {image_id, width, height, encode_cached, …}. */
export function uploadImage(file) {
  const form = new FormData();
  form.append("image", file, file.name || "image");
  form.append("request", JSON.stringify(withModel({ mask_format: "none" })));
  return call("POST", "v1/segment", { form });
}

/** A /v1/segment request body (prompts, return_logits, …) on the current image. */
export const postSegment = (body) => callWithImage("v1/segment", body);

/** Every object of the current image with its label suggested from ``collection``. */
export const postPredict = (collection) => callWithImage("v1/predict", { collection, mask_format: "rle" });

/** Store ``rle`` (a mask of the current image) as an example of ``label``; {ids, label, collection}. */
export const postExample = (rle, label, collection) =>
  callWithImage("v1/examples", { mask_rle: { size: rle.size, counts: rle.counts }, label, collection });

/** {counts: {label: n}, total} of ``collection``; throws unknown_collection before its first example. */
export const getExampleCounts = (collection) => call("GET", `v1/examples?collection=${encodeURIComponent(collection)}&limit=1`);

export const deleteExample = (exampleId, collection) =>
  call("DELETE", `v1/examples/${encodeURIComponent(exampleId)}?collection=${encodeURIComponent(collection)}`);

export const getReady = () => call("GET", "readyz");

/** {default, models: [{model_id, family, weights, default, capabilities, devices, …}]}, the default first. */
export const getModels = () => call("GET", "v1/models");

/** COCO RLE masks traced as polygons by the service (at most 256 per call); {masks: [{polygons, segmentation}]}. */
export const postPolygons = (rles, polygonTolerancePx) =>
  call("POST", "v1/masks/polygons", {
    json: { masks: rles.map((r) => ({ size: r.size, counts: r.counts })), polygon_tolerance_px: polygonTolerancePx },
  });
