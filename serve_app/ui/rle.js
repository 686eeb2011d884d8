// COCO RLE in the browser: the compressed string of pycocotools (maskApi.c rleFrString) to pixels.
//
// A COCO RLE is {size: [h, w], counts}. The counts are run lengths over the mask in column-major
// (Fortran) order, the first run counting zeros. The compressed string stores each count in 6-bit
// characters (offset 48): 5 data bits, bit 0x20 "more follows", the last character's bit 0x10 the
// sign; from the fourth count on, each count is stored as the difference to the count two before.

/** Run lengths of a compressed COCO counts string (or an uncompressed list, returned as is). */
export function rleCounts(counts) {
  if (Array.isArray(counts)) return counts;
  if (typeof counts !== "string") throw new Error("RLE counts must be a string or a list");
  const out = [];
  let p = 0;
  while (p < counts.length) {
    let x = 0, k = 0, more = true, c = 0;
    while (more) {
      if (p >= counts.length) throw new Error("truncated RLE counts string");
      c = counts.charCodeAt(p) - 48;
      if (c < 0 || c > 63) throw new Error(`bad character in RLE counts at ${p}`);
      x += (c & 0x1f) * 2 ** (5 * k); // arithmetic, not bit ops: counts may exceed 2^31 >> 5k
      more = (c & 0x20) !== 0;
      p++; k++;
      if (!more && (c & 0x10)) x -= 2 ** (5 * k); // sign-extend
    }
    if (out.length > 2) x += out[out.length - 2];
    out.push(x);
  }
  return out;
}

/**
 * Decode a COCO RLE, keeping its column-major order (runs are filled with memset, no scattered writes).
 * @param {{size: number[], counts: string|number[]}} rle
 * @returns {{width: number, height: number, data: Uint8Array, runs: Uint32Array, area: number, bbox: number[]|null}}
 *   data: (w*h) 0/1, column-major (index x * h + y); runs: [start, end) index pairs of the runs of ones;
 *   bbox: [x0, y0, x1, y1] in pixel edges (last column/row + 1), null if empty.
 */
export function decodeRle(rle) {
  const [h, w] = rle.size;
  const data = new Uint8Array(h * w);
  const counts = rleCounts(rle.counts);
  const runs = new Uint32Array(counts.length + 1);
  let pos = 0, area = 0, nRuns = 0;
  let x0 = w, y0 = h, x1 = -1, y1 = -1;
  for (let i = 0; i < counts.length; i++) {
    const n = counts[i];
    if (n < 0 || pos + n > h * w) throw new Error("RLE counts do not fit the mask size");
    if (i % 2 === 1 && n > 0) {
      data.fill(1, pos, pos + n);
      runs[nRuns++] = pos;
      runs[nRuns++] = pos + n;
      const xs = Math.floor(pos / h), ys = pos - xs * h;
      const xe = Math.floor((pos + n - 1) / h), ye = pos + n - 1 - xe * h;
      x0 = Math.min(x0, xs); x1 = Math.max(x1, xe);
      if (xe > xs) { y0 = 0; y1 = h - 1; } // the run wraps a column: it touches the top and bottom rows
      else { y0 = Math.min(y0, ys); y1 = Math.max(y1, ye); }
      area += n;
    }
    pos += n;
  }
  if (pos !== h * w) throw new Error(`RLE counts cover ${pos} pixels, the mask has ${h * w}`);
  return { width: w, height: h, data, runs: runs.subarray(0, nRuns), area, bbox: area ? [x0, y0, x1 + 1, y1 + 1] : null };
}

/** (h*w) 0/1 row-major (index y * w + x) copy of a decoded mask. */
export function toRowMajor({ width: w, height: h, data }) {
  const out = new Uint8Array(w * h);
  for (let x = 0, i = 0; x < w; x++) for (let y = 0; y < h; y++, i++) out[y * w + x] = data[i];
  return out;
}

/** [x, y, width, height] of a COCO box from samgraph's pixel-edge [x0, y0, x1, y1]. */
export function xyxyToXywh([x0, y0, x1, y1]) {
  return [x0, y0, x1 - x0, y1 - y0];
}

/**
 * A COCO dataset (instances format) of the session's accepted annotations.
 * @param {Array<{id: number, file_name: string, width: number, height: number, image_id: string}>} images
 * @param {Array<{image: number, label: string, rle: object, bbox_xyxy: number[], area_px: number}>} annotations
 *   image: the id of an entry of ``images``.
 * @param {Array<number[][] | null>} [polygons] per annotation, COCO's flat polygon lists to write as its
 *   ``segmentation`` instead of its RLE (null: the RLE).
 */
export function cocoDataset(images, annotations, polygons = []) {
  const names = [...new Set(annotations.map((a) => a.label))].sort();
  const categoryId = new Map(names.map((n, i) => [n, i + 1]));
  return {
    info: { description: "samgraph annotations", date_created: new Date().toISOString() },
    images: images.map((im) => ({
      id: im.id, file_name: im.file_name, width: im.width, height: im.height, samgraph_image_id: im.image_id,
    })),
    annotations: annotations.map((a, i) => ({
      id: i + 1,
      image_id: a.image,
      category_id: categoryId.get(a.label),
      segmentation: polygons[i] || { size: a.rle.size, counts: a.rle.counts },
      area: a.area_px,
      bbox: xyxyToXywh(a.bbox_xyxy),
      iscrowd: 0,
    })),
    categories: names.map((n) => ({ id: categoryId.get(n), name: n, supercategory: "" })),
  };
}
