"""The outputs of a ``samgraph batch`` run, written by the driver as images finish.

* ``results.json``: COCO results (``image_id``, ``segmentation`` RLE, ``bbox`` XYWH pixels, ``score``,
  ``category_id`` where known) that ``pycocotools.coco.COCO.loadRes`` accepts, streamed as one JSON list;
* ``instances.parquet``: one row per instance, written in row groups of :attr:`ResultWriter.PARQUET_BATCH`;
* ``summary.json``: counts, failures, throughput and per-stage times (:class:`BatchSummary`).

Every file is written under a temporary name and renamed into place when complete (:class:`AtomicFile`):
a reader sees the old file or the whole new one, never a part.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


class AtomicFile:
    """A file written under a temporary name and renamed into place by :meth:`commit`.

    Readers never see a partial file: either the old one or the complete new one.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")

    def commit(self) -> None:
        """Rename the temporary file into place (replacing any old file)."""
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        """Delete the temporary file, leaving any old file as it was."""
        self.tmp.unlink(missing_ok=True)

    def write_text(self, text: str) -> None:
        """Write ``text`` to the temporary file, then :meth:`commit` it."""
        self.tmp.write_text(text)
        self.commit()


class ResultWriter:
    """Streams instances into the COCO results JSON and the Parquet file as images finish.

    Args:
        out_dir: created if missing.
        with_embeddings: add an ``embedding`` list column to the Parquet file.
        categories: COCO category id -> name, to map labels to ``category_id``.
    """

    PARQUET_BATCH = 512

    def __init__(
        self, out_dir: str | os.PathLike, with_embeddings: bool = False, categories: dict[int, str] | None = None
    ) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.results = AtomicFile(out / "results.json")
        self.parquet = AtomicFile(out / "instances.parquet")
        self.with_embeddings = with_embeddings
        self.category_of = {name: cid for cid, name in (categories or {}).items()}
        self._json = open(self.results.tmp, "w")  # noqa: SIM115 (closed in close())
        self._json.write("[")
        self._first = True
        self._rows: list[dict] = []
        self._writer = None
        self.instances = 0

    def add(self, row: dict) -> None:
        """Write one finished image's instances.

        Args:
            row: the image's final row: ``path``, ``image_id``, ``instances`` (each ``rle`` COCO RLE of the
                image's size, ``bbox_xyxy`` pixels, ``area_px``, ``predicted_iou``, ``stability_score``,
                ``ann_id``, ``category_id`` and, when labelled, ``label`` and ``confidence``) and, with
                embeddings, ``embeddings``: (E, D) float32, one row per instance whose ``embedded`` is set.
        """
        embeddings = row.get("embeddings")
        for k, inst in enumerate(row["instances"]):
            rle = inst["rle"]
            x0, y0, x1, y1 = inst["bbox_xyxy"]
            label = inst.get("label")
            category_id = inst["category_id"] if inst.get("category_id") is not None else self.category_of.get(label)
            score = inst["predicted_iou"] * (inst["confidence"] if label is not None else 1.0)
            rec = {
                "image_id": int(row["image_id"]),
                "segmentation": rle,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(score),
            }
            if category_id is not None:
                rec["category_id"] = int(category_id)
            self._json.write(("" if self._first else ",\n") + json.dumps(rec))
            self._first = False
            prow = {
                "image_path": str(row["path"]),
                "image_id": int(row["image_id"]),
                "instance": k,
                "ann_id": inst.get("ann_id"),
                "category_id": None if category_id is None else int(category_id),
                "bbox_xyxy": [float(v) for v in inst["bbox_xyxy"]],
                "area_px": int(inst["area_px"]),
                "predicted_iou": float(inst["predicted_iou"]),
                "stability_score": float(inst["stability_score"]),
                "label": label,
                "confidence": None if label is None else float(inst["confidence"]),
                "rle_size": list(rle["size"]),
                "rle_counts": rle["counts"],
            }
            if self.with_embeddings:
                j = sum(1 for i in row["instances"][:k] if i.get("embedded", True))
                embedded = inst.get("embedded", True) and embeddings is not None
                prow["embedding"] = embeddings[j].tolist() if embedded else None
            self._rows.append(prow)
            self.instances += 1
        if len(self._rows) >= self.PARQUET_BATCH:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=self._schema())
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.parquet.tmp, table.schema)
        self._writer.write_table(table)
        self._rows = []

    def _schema(self):
        import pyarrow as pa

        fields = [
            ("image_path", pa.string()), ("image_id", pa.int64()), ("instance", pa.int32()), ("ann_id", pa.int64()),
            ("category_id", pa.int64()), ("bbox_xyxy", pa.list_(pa.float64())), ("area_px", pa.int64()),
            ("predicted_iou", pa.float32()), ("stability_score", pa.float32()), ("label", pa.string()),
            ("confidence", pa.float32()), ("rle_size", pa.list_(pa.int32())), ("rle_counts", pa.string()),
        ]
        if self.with_embeddings:
            fields.append(("embedding", pa.list_(pa.float32())))
        return pa.schema(fields)

    def close(self, commit: bool = True) -> None:
        """Finish both files; rename them into place (``commit``) or delete them."""
        import pyarrow.parquet as pq

        self._json.write("]\n")
        self._json.close()
        self._flush()
        if self._writer is None:  # no instances: an empty file with the schema
            pq.write_table(self._schema().empty_table(), self.parquet.tmp)
        else:
            self._writer.close()
        for f in (self.results, self.parquet):
            f.commit() if commit else f.discard()


@dataclass
class BatchSummary:
    """What a run did; written as ``summary.json``."""

    images: int = 0
    failed: list[dict] = field(default_factory=list)
    instances: int = 0
    examples_added: int = 0
    wall_s: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        """Throughput of the run: images written per second of wall time."""
        return self.images / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict:
        """The ``summary.json`` document (times rounded; ``stage_ms_per_image`` ms per image)."""
        return {
            "images_ok": self.images,
            "images_failed": len(self.failed),
            "failed": self.failed,
            "instances": self.instances,
            "examples_added": self.examples_added,
            "wall_s": round(self.wall_s, 3),
            "images_per_s": round(self.images_per_s, 4),
            "stage_ms_per_image": {k: round(v, 2) for k, v in self.stage_ms.items()},
            "outputs": self.outputs,
        }


def stage_table(summary: BatchSummary) -> str:
    """The per-stage times of a run as a small text table (stage, ms/image, images/s)."""
    lines = [f"{'stage':<10}{'ms/image':>10}{'images/s':>10}"]
    for k, v in summary.stage_ms.items():
        lines.append(f"{k:<10}{v:>10.1f}{(1e3 / v if v > 0 else float('inf')):>10.2f}")
    return "\n".join(lines)


def write_summary(summary: BatchSummary, out_dir: str | os.PathLike) -> Path:
    """Write ``summary.json`` (:meth:`BatchSummary.as_dict`) into ``out_dir`` atomically.

    Args:
        summary: the finished run's summary.
        out_dir: the run's output folder (it exists: :class:`ResultWriter` made it).

    Returns:
        The path written.
    """
    out = AtomicFile(Path(out_dir) / "summary.json")
    out.write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
    return out.path
