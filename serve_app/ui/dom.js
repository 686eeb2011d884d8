// DOM helpers every module uses: an element by id, a new element with properties, a colour swatch.

/** The element with this id. */
export const $ = (id) => document.getElementById(id);

/** A new ``tag`` element with ``props`` assigned (textContent, className, value, title, disabled, …). */
export const el = (tag, props = {}) => Object.assign(document.createElement(tag), props);

/** A small square of ``color`` ([r, g, b], 0-255) for the lists of predictions and annotations. */
export function swatch(color) {
  const s = el("span", { className: "swatch" });
  s.style.background = `rgb(${color.join(",")})`;
  return s;
}
