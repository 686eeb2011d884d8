// Prompts on the current image. The mouse on the prompts canvas: left click a foreground point, right
// or shift+click a background point, a drag of more than DRAG_THRESHOLD_PX a box. Every prompt asks
// /v1/segment for masks, sending the prompts so far and the chosen candidate's low_res_logits as
// mask_input; the requests run one after the other (ui.queue), each needing the answer before it.
// A model without a capability (points, boxes, mask_input, multimask) is not asked for it.
// Also the history moves: undo, redo, clear, and cycling through the candidates.
// After each answer #status's dataset holds the timings: masksShown, clickMs (input event to the frame
// that shows the mask), fetchMs, renderMs, serverMs.

import { $ } from "./dom.js";
import { postSegment } from "./api.js";
import { drawPrompts, render, updateControls } from "./overlay.js";
import { can, chosenMask, current, dropFrom, emptyState, inHistory, modelId, push, stepBack, stepForward, ui } from "./state.js";
import { hideError, setBusy, setStatus, showError } from "./status.js";

const DRAG_THRESHOLD_PX = 5; // screen pixels before a press becomes a box

let masksShown = 0; // prompts answered and drawn
let drag = null; // the press in progress: {sx, sy, p0, button, shift, moved, box}

export function undo() {
  if (stepBack()) render();
}

export function redo() {
  if (stepForward()) render();
}

export function clearPrompts() {
  const s = current();
  if (s.points.length || s.box) {
    push(emptyState());
    render();
  }
}

/** The next (``step`` 1) or previous (-1) candidate mask. */
export function cycle(step) {
  const s = current();
  if (!s.masks || s.masks.length < 2) return;
  s.sel = (s.sel + step + s.masks.length) % s.masks.length;
  render();
}

/** The "Masks" select: null lets the service choose. */
function multimaskOutput() {
  return { auto: null, multi: true, single: false }[$("multimask").value];
}

/** A point [x, y, 1|0] or a box [x0, y0, x1, y1] added to the object; ``t0`` the input event's time. */
function addPrompt({ point = null, box = null }, t0) {
  if (!ui.image) return;
  const kind = point ? "points" : "boxes";
  if (!can(kind)) {
    drawPrompts();
    setStatus(`${modelId()} takes no ${kind === "points" ? "clicks" : "boxes"}`);
    return;
  }
  hideError();
  const prev = current();
  const next = { points: point ? [...prev.points, point] : prev.points, box: box || prev.box, masks: null, sel: 0 };
  push(next);
  drawPrompts();
  updateControls();
  ui.queue = ui.queue.then(() => segment(next, prev, t0));
}

/** Ask for the masks of history entry ``state``, refining ``prev``'s chosen mask; a failure takes it back. */
async function segment(state, prev, t0) {
  if (!inHistory(state)) return; // undone and replaced, or cleared, before its turn
  const prompt = {};
  if (state.points.length) prompt.points = state.points;
  if (state.box) prompt.box_xyxy = state.box;
  const refine = chosenMask(prev);
  if (refine && refine.low_res_logits && can("mask_input")) prompt.mask_input = refine.low_res_logits;
  const body = { prompts: [prompt], return_logits: can("mask_input"), mask_format: "rle", max_masks: 3 };
  const mm = can("multimask") ? multimaskOutput() : null;
  if (mm !== null) body.multimask_output = mm;
  setBusy(+1, "segmenting…");
  try {
    const tf = performance.now();
    const out = await postSegment(body);
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
          masksShown: String(++masksShown),
          clickMs: ms.toFixed(1), fetchMs: fetchMs.toFixed(1), renderMs: renderMs.toFixed(1), serverMs: out.timing_ms.total.toFixed(1),
        });
        setStatus(`mask in ${ms.toFixed(0)} ms (server ${out.timing_ms.total.toFixed(0)} ms)`);
      });
    }
  } catch (e) {
    if (dropFrom(state)) render(); // the prompt did not work: take it back, show why
    showError(e);
  } finally {
    setBusy(-1);
  }
}

// ------------------------------------------------------------------ mouse
/** [x, y] in pixels of the original image (0.1 px steps, clamped to the image) under the mouse. */
function toImage(e) {
  const r = $("prompts").getBoundingClientRect();
  const x = Math.min(Math.max(((e.clientX - r.left) / r.width) * ui.image.width, 0), ui.image.width);
  const y = Math.min(Math.max(((e.clientY - r.top) / r.height) * ui.image.height, 0), ui.image.height);
  return [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
}

/** On the prompts canvas. A press leaves any text field (preventDefault keeps focus where it was), so
 *  that the keys after it are shortcuts. */
export function onMouseDown(e) {
  if (!ui.image || (e.button !== 0 && e.button !== 2)) return;
  e.preventDefault();
  if (document.activeElement && document.activeElement.matches("input, select, textarea")) document.activeElement.blur();
  drag = { sx: e.clientX, sy: e.clientY, p0: toImage(e), button: e.button, shift: e.shiftKey, moved: false, box: null };
}

/** On the window, so that a drag may leave the canvas. */
export function onMouseMove(e) {
  if (!drag) return;
  if (drag.button === 0 && Math.hypot(e.clientX - drag.sx, e.clientY - drag.sy) > DRAG_THRESHOLD_PX) drag.moved = true;
  if (drag.moved) {
    const [x, y] = toImage(e);
    const [x0, y0] = drag.p0;
    drag.box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
    drawPrompts(drag.box);
  }
}

/** On the window: the press ends as a point, or as a box at least one pixel wide and high. */
export function onMouseUp(e) {
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
