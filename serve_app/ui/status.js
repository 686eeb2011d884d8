// What the page tells the user: the status line, the busy flag, the error banner and the warnings
// banner. ShownError is the error every module throws; showError takes any error.
// body[data-busy] is "1" while a request is in flight (the browser tests wait on it).

import { $ } from "./dom.js";

/** An error to show: from the API body {error: {code, message, field, request_id}}, or the page's own. */
export class ShownError extends Error {
  constructor(code, message, { status = null, field = null, requestId = null, where = null } = {}) {
    super(message);
    Object.assign(this, { code, status, field, requestId, where });
  }
}

let busy = 0; // requests in flight
const warnings = new Set(); // every warning of the session (e.g. random weights), shown together
let modelWarning = null; // the chosen model's own (its random weights), replaced when another is chosen

export function setStatus(text) {
  $("status").textContent = text;
}

/** A request starts (+1) or ends (-1); ``text``, if given, goes to the status line. */
export function setBusy(delta, text) {
  busy += delta;
  document.body.dataset.busy = busy > 0 ? "1" : "0";
  if (text) setStatus(text);
}

/** The error banner: "code: message (field: …) [METHOD path, HTTP status, request id]". */
export function showError(e) {
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

export function hideError() {
  $("error").hidden = true;
  delete $("error").dataset.code;
}

/** Add ``list`` (strings, may be undefined) to the warnings banner. */
export function showWarnings(list) {
  for (const w of list || []) warnings.add(w);
  renderWarnings();
}

/** The chosen model's warning in the banner (``text``), or none (null); it replaces the previous model's. */
export function setModelWarning(text) {
  modelWarning = text;
  renderWarnings();
}

function renderWarnings() {
  const all = [...(modelWarning ? [modelWarning] : []), ...warnings];
  $("warning").textContent = all.join(" · ");
  $("warning").hidden = all.length === 0;
}
