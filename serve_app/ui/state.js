// The session's state: the served models and the chosen one, the images opened, the accepted annotations,
// the current image's predictions and text-prompt candidates, and the undo/redo history of the prompts on
// the current object. Plain data: no DOM, no requests.
//
// A history entry is {points, box, masks, sel}: points [[x, y, 1|0], …] (1 foreground, 0 background)
// and box [x0, y0, x1, y1] | null, both in pixels of the original image; masks, the /v1/segment
// candidates they got (null until answered); sel, the index of the chosen candidate. A new prompt
// pushes a new entry; only masks and sel of an entry change, when its answer comes.

export const emptyState = () => ({ points: [], box: null, masks: null, sel: 0 });

export const ui = {
  models: [], // GET /v1/models's entries: {model_id, family, weights, default, capabilities, …}
  model: null, // the chosen entry; null (before the list, or if it failed): the service's default model
  file: null, // the File being annotated; sent again if the server evicted its features
  image: null, // {id, image_id, width, height, file_name}
  images: [], // every image of the session, for the export
  history: [emptyState()],
  at: 0, // the index of the current entry in history
  annotations: [], // {image, label, rle, bbox_xyxy, area_px, example_id, collection, source}
  predictions: [], // the last /v1/predict instances of the current image, with color, state and collection
  found: [], // the last text prompt's candidates on the current image (see found.js), with color and state
  queue: Promise.resolve(), // segment requests run one after the other: each needs the last logits
};

/** Whether the chosen model can do ``capability`` (points, boxes, mask_input, multimask, automatic_masks,
 *  concept_prompts, video: GET /v1/models); true while no model is known (the service decides). */
export const can = (capability) => !ui.model || ui.model.capabilities[capability] !== false;

/** The chosen model's id, or null: requests then leave model_id out and get the default. */
export const modelId = () => (ui.model ? ui.model.model_id : null);

/** The current history entry. */
export const current = () => ui.history[ui.at];

/** The chosen candidate of an entry (by default the current one), or null before its answer. */
export const chosenMask = (s = current()) => (s.masks && s.masks[s.sel]) || null;

export function resetHistory() {
  ui.history = [emptyState()];
  ui.at = 0;
}

/** Make ``state`` the current entry; the entries undone before it are dropped. */
export function push(state) {
  ui.history = ui.history.slice(0, ui.at + 1);
  ui.history.push(state);
  ui.at = ui.history.length - 1;
}

/** One entry back (undo); false if there is none. */
export function stepBack() {
  if (ui.at === 0) return false;
  ui.at--;
  return true;
}

/** One entry forward (redo); false if there is none. */
export function stepForward() {
  if (ui.at === ui.history.length - 1) return false;
  ui.at++;
  return true;
}

/** Whether ``state`` is still in the history (not undone and replaced, nor cleared). */
export const inHistory = (state) => ui.history.includes(state);

/** Drop ``state`` and the entries after it (its prompt failed); false if it is gone already. */
export function dropFrom(state) {
  const i = ui.history.indexOf(state);
  if (i < 0) return false;
  ui.history = ui.history.slice(0, i);
  ui.at = Math.min(ui.at, i - 1);
  return true;
}
