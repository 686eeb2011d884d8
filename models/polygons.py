"""Masks as polygons: outer rings with their holes, traced by GDAL (rasterio) and simplified by GEOS (Shapely).

Coordinates are pixels of the mask's image in the pixel-edge convention COCO uses: pixel ``(x, y)`` (column,
row) covers the square ``[x, x + 1] x [y, y + 1]``, so a ring runs along pixel edges and a polygon's area
is its pixel count (at tolerance 0). Rings are closed implicitly: the first vertex is not repeated.

Tracing uses 4-connectivity (``rasterio.features.shapes``): pixels that touch only at a corner are separate
parts, so every ring is simple. Simplification is Douglas-Peucker with topology kept
(``shapely.simplify(..., preserve_topology=True)``): rings of one part never cross, holes stay inside.

Pure arrays in and out; no file I/O (rasterio works on the in-memory array).
"""

from __future__ import annotations

import numpy as np


def mask_to_polygons(mask: np.ndarray, tolerance_px: float = 0.0) -> list[dict]:
    """The parts of a mask as polygons with holes.

    Args:
        mask: (H, W) bool (or 0/1 integers).
        tolerance_px: float >= 0, the simplification tolerance in pixels (the largest distance a
            simplified ring may stray from the traced one). 0 keeps the exact outline, dropping only
            vertices in the middle of straight runs.

    Returns:
        One dict per 4-connected part, largest area first:
        ``{"exterior": [[x, y], ...], "holes": [[[x, y], ...], ...]}``; integer pixel coordinates in the
        pixel-edge convention (simplification only drops traced vertices, so they stay on pixel corners).
        Exteriors have a positive shoelace area and holes a negative one, as GeoJSON (RFC 7946) orients
        rings in (x, y); on screen, with y down, exteriors therefore run clockwise. Empty list for an
        empty mask. A part that simplification reduces to nothing is dropped.

    Raises:
        ValueError: ``mask`` is not 2-D, or ``tolerance_px`` is negative or not finite.
    """
    import rasterio.features
    import shapely

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if not (np.isfinite(tolerance_px) and tolerance_px >= 0):
        raise ValueError(f"tolerance_px must be a finite number >= 0; got {tolerance_px!r}")
    binary = mask.astype(bool)
    if not binary.any():
        return []
    shapes = rasterio.features.shapes(binary.view(np.uint8), mask=binary, connectivity=4)
    polygons = [shapely.geometry.shape(geom) for geom, _ in shapes]
    polygons = [shapely.simplify(p, tolerance_px, preserve_topology=True) for p in polygons]
    polygons = sorted((p for p in polygons if not p.is_empty and p.area > 0), key=lambda p: -p.area)
    return [_as_rings(shapely.geometry.polygon.orient(p, 1.0)) for p in _parts(polygons)]


def _parts(geoms) -> list:
    """Polygons out of simplified geometries (a simplified polygon stays a polygon, but be exact)."""
    out = []
    for g in geoms:
        out.extend(getattr(g, "geoms", [g]))
    return [g for g in out if g.geom_type == "Polygon" and g.area > 0]


def _as_rings(polygon) -> dict:
    def ring(r) -> list[list[float]]:
        return [[round(x), round(y)] for x, y in r.coords[:-1]]

    return {"exterior": ring(polygon.exterior), "holes": [ring(h) for h in polygon.interiors]}


def polygons_to_mask(polygons: list[dict], height: int, width: int) -> np.ndarray:
    """Rasterise :func:`mask_to_polygons` output back to a mask: a pixel is inside when its centre is
    inside an exterior and outside that part's holes (GDAL's rule, ``rasterio.features.rasterize``).

    Args:
        polygons: ``[{"exterior": [[x, y], ...], "holes": [...]}, ...]`` in the pixel-edge convention.
        height, width: the mask's size in pixels.

    Returns:
        (height, width) bool.

    Raises:
        ValueError: a ring has fewer than 3 vertices.
    """
    import rasterio.features
    import shapely

    if not polygons:
        return np.zeros((height, width), bool)
    geoms = []
    for i, p in enumerate(polygons):
        rings = [p["exterior"], *p.get("holes", [])]
        if any(len(r) < 3 for r in rings):
            raise ValueError(f"polygons[{i}]: every ring needs at least 3 vertices")
        geoms.append(shapely.geometry.Polygon(rings[0], rings[1:]))
    return rasterio.features.rasterize(
        geoms, out_shape=(height, width), fill=0, default_value=1, dtype=np.uint8
    ).astype(bool)


def coco_segmentation(polygons: list[dict]) -> list[list[float]]:
    """COCO's polygon ``segmentation``: each part's exterior as a flat ``[x0, y0, x1, y1, ...]`` list.

    COCO polygons cannot express holes: a mask with holes comes back filled from this list (use the
    ``holes`` of :func:`mask_to_polygons`, or RLE, to keep them).
    """
    return [[c for xy in p["exterior"] for c in xy] for p in polygons]
