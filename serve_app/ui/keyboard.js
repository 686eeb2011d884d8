// Keyboard shortcuts (the table #shortcuts lists them). While typing in a field only Esc counts (it
// leaves the field); Enter and Space on a button press the button; Ctrl stands for Cmd too.
//   Ctrl+Z undo, Ctrl+Shift+Z or Ctrl+Y redo, Esc clear the prompts, C / Shift+C next / previous
//   candidate, L type a label, T type a text prompt, Enter accept the mask, P predict, A accept the first
//   suggestion,
//   V hide or show the overlay, E export COCO JSON, O open an image.

import { $ } from "./dom.js";
import { acceptCurrent, exportCoco } from "./annotations.js";
import { toggleOverlay } from "./overlay.js";
import { acceptFirstSuggestion, predict } from "./predict.js";
import { clearPrompts, cycle, redo, undo } from "./prompts.js";

/** On the document. */
export function onKeyDown(e) {
  const typing = e.target.matches("input, select, textarea");
  if (e.key === "Escape") {
    if (typing) e.target.blur();
    else clearPrompts();
    return;
  }
  if (typing || (e.target.matches("button") && (e.key === "Enter" || e.key === " "))) return;
  const k = e.key.toLowerCase();
  const ctrl = e.ctrlKey || e.metaKey;
  if (ctrl && k === "z") {
    e.preventDefault();
    if (e.shiftKey) redo();
    else undo();
  } else if (ctrl && k === "y") {
    e.preventDefault();
    redo();
  } else if (ctrl || e.altKey) {
    return;
  } else if (e.key === "Enter") {
    e.preventDefault();
    acceptCurrent();
  } else if (k === "c") {
    cycle(e.shiftKey ? -1 : 1);
  } else if (k === "l") {
    e.preventDefault();
    $("label").focus();
  } else if (k === "t") {
    e.preventDefault();
    if (!$("text").disabled) $("text").focus();
  } else if (k === "p") {
    predict();
  } else if (k === "a") {
    acceptFirstSuggestion();
  } else if (k === "v") {
    toggleOverlay();
  } else if (k === "e") {
    exportCoco();
  } else if (k === "o") {
    $("file").click();
  }
}
