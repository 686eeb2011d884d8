// Drawing the stage: the overlay canvas (the open predictions and text-prompt candidates, then the
// current mask on top), the prompts canvas (points and the box), the stage's size on screen, and the
// controls that follow the current state and the chosen model's capabilities. Both canvases have the image's own resolution; CSS scales them.
// The overlay counts its renders in data-renders (the browser tests wait on it).

import { $ } from "./dom.js";
import { decodeRle } from "./rle.js";
import { can, chosenMask, current, ui } from "./state.js";

export const CURRENT_COLOR = [30, 144, 255];
export const PALETTE = [
  [255, 99, 71], [50, 205, 50], [255, 215, 0], [186, 85, 211], [0, 206, 209],
  [255, 140, 0], [199, 21, 133], [154, 205, 50], [240, 128, 128], [72, 209, 204],
];
const FILL_ALPHA = 110;
const PREDICTION_FILL_ALPHA = 80;

let scale = 1; // screen pixels per image pixel
let overlayVisible = true;
let transposed = null; // the overlay's pixels, column-major: a canvas (h wide, w high) and its ImageData
let pixels = null;
let renders = 0;
const decoded = new WeakMap(); // RLE object -> decoded mask

function maskOf(rle) {
  let m = decoded.get(rle);
  if (!m) {
    m = decodeRle(rle);
    decoded.set(rle, m);
  }
  return m;
}

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

/** Redraw everything: controls, prompts and the overlay. The overlay is painted column-major into a
 *  transposed buffer (memset fills, contiguous reads), then drawn transposed back onto the canvas. */
export function render() {
  updateControls();
  drawPrompts();
  if (!ui.image) return;
  const { width: w, height: h } = ui.image;
  if (!transposed || transposed.width !== h || transposed.height !== w) {
    transposed = Object.assign(document.createElement("canvas"), { width: h, height: w });
    pixels = new ImageData(h, w);
  }
  const px = new Uint32Array(pixels.data.buffer);
  px.fill(0);
  const t = Math.max(1, Math.round(1 / scale));
  for (const p of [...ui.predictions, ...ui.found]) if (p.state === "open") paintMask(px, maskOf(p.rle), p.color, PREDICTION_FILL_ALPHA, t);
  const m = chosenMask();
  if (m && m.rle) paintMask(px, maskOf(m.rle), CURRENT_COLOR, FILL_ALPHA, t);
  transposed.getContext("2d").putImageData(pixels, 0, 0);
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.setTransform(0, 1, 1, 0, 0, 0); // (u, v) -> (v, u): column x of the image is row x of the buffer
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(transposed, 0, 0);
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  canvas.dataset.renders = String(++renders);
}

/** Redraw the current prompts; ``dragBox`` [x0, y0, x1, y1], a box being dragged, replaces the box, dashed. */
export function drawPrompts(dragBox = null) {
  const canvas = $("prompts");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!ui.image) return;
  const k = 1 / scale; // one screen pixel in image pixels
  const s = current();
  const box = dragBox || s.box;
  if (box) {
    ctx.lineWidth = 2 * k;
    ctx.setLineDash(dragBox ? [6 * k, 4 * k] : []);
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

/** Enable the controls that can act now and that the chosen model can do (automatic masks for Predict,
 *  multimask for the Masks select, concept prompts or automatic masks for the text prompt, concept
 *  prompts for its score threshold); the candidate's number and IoU; the overlay shown or hidden. */
export function updateControls() {
  const s = current();
  const has = !!ui.image;
  $("undo").disabled = !has || ui.at === 0;
  $("redo").disabled = !has || ui.at === ui.history.length - 1;
  $("clear").disabled = !has || (!s.points.length && !s.box);
  $("cycle").disabled = !s.masks || s.masks.length < 2;
  $("predict").disabled = !has || !can("automatic_masks");
  $("multimask").disabled = !can("multimask");
  const text = can("concept_prompts") || can("automatic_masks");
  $("text").disabled = !text;
  $("find").disabled = !has || !text;
  $("score-thresh").disabled = !can("concept_prompts");
  $("text-form").title = text ? "" : "this model takes no text prompts";
  $("accept").disabled = !s.masks || !s.masks.length;
  $("export").disabled = ui.annotations.length === 0;
  const m = chosenMask(s);
  $("candidate").textContent = m ? `${s.sel + 1}/${s.masks.length} · IoU ${m.predicted_iou.toFixed(2)}` : "–";
  $("overlay").classList.toggle("hidden", !overlayVisible);
}

export function toggleOverlay() {
  overlayVisible = !overlayVisible;
  updateControls();
}

/** Size the stage to fit the viewer (at most 4× the image), keeping the image's aspect ratio. */
export function layout() {
  if (!ui.image) return;
  const viewer = $("viewer").getBoundingClientRect();
  const pad = 8;
  const s = Math.min((viewer.width - 2 * pad) / ui.image.width, (viewer.height - 2 * pad) / ui.image.height, 4);
  scale = Math.max(s, 0.01);
  $("stage").style.width = `${ui.image.width * scale}px`;
  $("stage").style.height = `${ui.image.height * scale}px`;
}
