"""``samgraph labelstudio prelabel PROJECT``: pre-label a whole Label Studio project offline, through the Ray
Data pipeline of ``samgraph batch`` (:mod:`serve_app.offline.pipeline`), no samgraph service needed.

    Label Studio REST API: project label config, tasks, existing predictions
      -> Ray Data: load (the task's image fetched from Label Studio, :class:`TaskImageReader`) -> encode
         -> decode [-> fade -> embed -> retrieve]
      -> predictions posted back (``POST /api/projects/<id>/import/predictions``), in chunks as tasks finish

What each task gets is what Label Studio's *Retrieve predictions* gets from the service's ``/predict``
without a context (:func:`serve_app.labelstudio.instances_prediction`, shared with that route): on a
model with concept prompts (SAM 3) every instance of each label name of the config's mask control, the
names as concept classes; on SAM 2 and MobileSAM the automatic masks labelled by the few-shot examples of
a collection, kept where the label is one of the config's names. Regions are brush RLE (``BrushLabels``)
or polygons (``PolygonLabels``), with their score, and every prediction has ``model_version``
``samgraph-<model_id>``. Tasks that already hold a prediction of that version are skipped, as Label
Studio skips them, unless ``overwrite`` (then the old ones are deleted once the new one is stored).

Label Studio is reached with ``Authorization: Token <legacy token>``
(:class:`serve_app.task_images.LabelStudioHost`, from ``LABEL_STUDIO_URL`` and
``LABEL_STUDIO_API_KEY`` or the command's flags).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

import httpx

from serve_app.labelstudio import LabelConfig, instances_prediction, model_version, parse_label_config
from serve_app.offline.inputs import BatchInput, BatchPlan
from serve_app.offline.pipeline import BatchArgs, build_dataset, iter_finished, prepare_run, ray_session
from serve_app.task_images import LabelStudioHost

log = logging.getLogger("samgraph.labelstudio")

#: Tasks listed per page of ``GET /api/tasks``.
PAGE_SIZE = 100
#: Predictions posted per ``import/predictions`` call (as tasks finish; the last chunk at the end).
POST_CHUNK = 16


class LabelStudioError(RuntimeError):
    """Label Studio answered a call with an error status, or could not be reached (the message says which
    call, and its answer)."""


class LabelStudioApi:
    """The few calls of Label Studio's REST API the job makes (legacy token auth).

    Args:
        host: Label Studio's base URL and legacy token.
        timeout_s: per call.
    """

    def __init__(self, host: LabelStudioHost, timeout_s: float = 60.0) -> None:
        headers = {"Authorization": f"Token {host.token}"} if host.token else {}
        self.host = host
        self.http = httpx.Client(base_url=host.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> LabelStudioApi:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs):
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise LabelStudioError(f"{method} {self.host.url}{path}: {type(e).__name__}: {e}") from None
        if r.status_code not in ok:
            hint = " (check LABEL_STUDIO_API_KEY: a legacy token)" if r.status_code in (401, 403) else ""
            raise LabelStudioError(f"{method} {path}: {r.status_code}{hint} {r.text[:500]}")
        return r.json() if r.content else None

    def project(self, project_id: int) -> dict:
        """The project (``label_config`` among its fields)."""
        return self._call("GET", f"/api/projects/{project_id}")

    def tasks(self, project_id: int) -> list[dict]:
        """Every task of the project (``id``, ``data``), page by page."""
        out: list[dict] = []
        page = 1
        while True:
            params = {"project": project_id, "page": page, "page_size": PAGE_SIZE}
            body = self._call("GET", "/api/tasks", ok=(200, 404), params=params)
            if isinstance(body, dict):
                got, total = body.get("tasks") or [], body.get("total")
            else:  # a plain list (older Label Studio), or None past the last page
                got, total = body or [], None
            out += got
            if not got or len(got) < PAGE_SIZE or (total is not None and len(out) >= total):
                return out
            page += 1

    def predictions(self, project_id: int) -> list[dict]:
        """Every prediction of the project (``id``, ``task``, ``model_version``, ...)."""
        body = self._call("GET", "/api/predictions", params={"project": project_id})
        return body.get("results", []) if isinstance(body, dict) else body

    def import_predictions(self, project_id: int, predictions: list[dict]) -> int:
        """Store predictions (``{"task", "result", "score", "model_version"}`` each); the number created."""
        body = self._call("POST", f"/api/projects/{project_id}/import/predictions", ok=(200, 201), json=predictions)
        return int((body or {}).get("created", len(predictions)))

    def delete_prediction(self, prediction_id: int) -> None:
        self._call("DELETE", f"/api/predictions/{prediction_id}", ok=(200, 204, 404))


@dataclass(frozen=True)
class TaskImageReader:
    """The load stage's ``read``: a task row's image bytes, fetched from its URL (``row["path"]``: Label
    Studio's own ``/data/...`` path, an absolute URL or a ``data:`` URL) as the service's Label Studio
    backend fetches it (:class:`serve_app.task_images.TaskImages`). Pickled to the load workers.

    Attributes:
        host: Label Studio's base URL and token.
        max_bytes: an image over this many bytes is an error row.
        timeout_s: per fetch.
    """

    host: LabelStudioHost
    max_bytes: int = 64 * 2**20
    timeout_s: float = 60.0

    def __call__(self, row: dict) -> bytes:
        from serve_app.task_images import TaskImages

        images = TaskImages(self.max_bytes, max_entries=1, timeout_s=self.timeout_s, environ={})
        return asyncio.run(images.fetch(str(row["path"]), self.host))


@dataclass
class PrelabelSummary:
    """What a run did.

    Attributes:
        project: the project id.
        model_version: ``samgraph-<model_id>``.
        tasks: the project's tasks.
        predicted: tasks given a prediction.
        skipped: tasks left alone (a prediction of ``model_version`` already there).
        failed: ``{"task", "error"}`` per task that got none (no image URL, an image that could not be
            fetched or decoded, a prediction Label Studio refused).
        regions: regions posted, over all tasks.
        empty: predicted tasks whose prediction holds no region.
        wall_s: seconds from the pipeline's start to the last prediction stored (Ray's start excluded).
        stage_ms: mean ms per image of each pipeline stage.
    """

    project: int
    model_version: str
    tasks: int = 0
    predicted: int = 0
    skipped: int = 0
    failed: list[dict] = field(default_factory=list)
    regions: int = 0
    empty: int = 0
    wall_s: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        """Tasks predicted per second of ``wall_s``."""
        return self.predicted / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "project": self.project,
            "model_version": self.model_version,
            "tasks": self.tasks,
            "predicted": self.predicted,
            "skipped": self.skipped,
            "failed": self.failed,
            "regions": self.regions,
            "empty": self.empty,
            "wall_s": round(self.wall_s, 3),
            "images_per_s": round(self.images_per_s, 4),
            "stage_ms_per_image": {k: round(v, 2) for k, v in self.stage_ms.items()},
        }


def plan_prelabel(config: LabelConfig, model_id: str, collection: str) -> BatchPlan:
    """The pipeline's plan for a project: concept classes (the config's label names) on a model with
    concept prompts, else automatic masks labelled from ``collection``.

    Raises:
        ValueError: a bad collection name, or a model that makes neither concept instances nor automatic
            masks.
    """
    from deployments.runtime.store_checks import check_collection_name
    from models.registry import family_of

    caps = family_of(model_id).capabilities
    if caps.concept_prompts:
        return BatchPlan("auto", False, False, check_collection_name(collection), False, tuple(config.label_names))
    if not caps.automatic_masks:
        raise ValueError(f"{model_id} makes neither concept instances nor automatic masks: it cannot pre-label")
    return BatchPlan("auto", True, False, check_collection_name(collection), False)


def run_prelabel(
    project_id: int,
    host: LabelStudioHost,
    args: BatchArgs,
    *,
    collection: str = "default",
    overwrite: bool = False,
    limit: int | None = None,
    address: str | None = None,
    progress: bool = True,
) -> PrelabelSummary:
    """Pre-label every task of a Label Studio project and store the predictions in it.

    Args:
        project_id: the project's id.
        host: Label Studio's base URL and legacy token.
        args: the pipeline's settings (model, weights, stage resources; :func:`load_batch_args`).
        collection: the few-shot examples' collection (models without concept prompts).
        overwrite: predict tasks that already hold a prediction of this model version too, and delete
            those older predictions.
        limit: only the first ``limit`` tasks to predict (after skipping).
        address: a Ray cluster address (default ``RAY_ADDRESS``, else a new local Ray; an initialised Ray
            is used as it is).
        progress: show progress bars.

    Returns:
        The counts (:class:`PrelabelSummary`).

    Raises:
        LabelStudioError: Label Studio cannot be reached, refuses the token, or has no such project.
        ValueError: a label config samgraph cannot answer (as the service's ``/setup``), a bad collection
            name or a model that cannot pre-label.
        WeightsError, StoreError, UnknownCollection: as ``samgraph batch`` (before Ray starts).
    """
    version = model_version(args.model_id)
    summary = PrelabelSummary(project_id, version)
    with LabelStudioApi(host) as api:
        config = parse_label_config(api.project(project_id).get("label_config") or "")
        plan = plan_prelabel(config, args.model_id, collection)
        tasks = api.tasks(project_id)
        summary.tasks = len(tasks)
        older: dict[int, list[int]] = {}
        for p in api.predictions(project_id):
            if p.get("model_version") == version:
                older.setdefault(int(p["task"]), []).append(int(p["id"]))
        items = []
        for task in tasks:
            tid = int(task["id"])
            if tid in older and not overwrite:
                summary.skipped += 1
                continue
            url = (task.get("data") or {}).get(config.image_key)
            if not isinstance(url, str) or not url:
                error = f"its data has no image URL under {config.image_key!r} (the <Image> tag's value)"
                summary.failed.append({"task": tid, "error": error})
                continue
            items.append({"path": url, "image_id": tid, "anns": "[]"})
        items = items[:limit]
        if not items:
            return summary
        ready = prepare_run(plan, args)
        pending: list[dict] = []
        finished = 0

        def post(chunk: list[dict]) -> None:
            try:
                api.import_predictions(project_id, chunk)
            except LabelStudioError as e:
                summary.failed += [{"task": p["task"], "error": f"Label Studio refused it: {e}"} for p in chunk]
                return
            summary.predicted += len(chunk)
            summary.regions += sum(len(p["result"]) for p in chunk)
            summary.empty += sum(1 for p in chunk if not p["result"])
            if overwrite:
                for p in chunk:
                    for old in older.get(p["task"], []):
                        api.delete_prediction(old)

        with ray_session(args, address, progress):
            t0 = time.perf_counter()
            try:
                dataset = build_dataset(BatchInput(items), plan, args, *ready, read=TaskImageReader(host))
                for row in iter_finished(dataset, progress):
                    tid = int(row["image_id"])
                    if row["error"]:
                        summary.failed.append({"task": tid, "error": str(row["error"])})
                        log.warning("task %s: %s", tid, row["error"])
                        continue
                    answer = instances_prediction(row["instances"], config, row["width"], row["height"], args.model_id)
                    pending.append({"task": tid, **answer})
                    finished += 1
                    for k, v in row["timing_ms"].items():
                        summary.stage_ms[k] = summary.stage_ms.get(k, 0.0) + v
                    if len(pending) >= POST_CHUNK:
                        post(pending)
                        pending = []
                if pending:
                    post(pending)
            finally:
                summary.wall_s = time.perf_counter() - t0
    summary.stage_ms = {k: v / max(finished, 1) for k, v in summary.stage_ms.items()}
    return summary


def summary_text(summary: PrelabelSummary) -> str:
    """The run's counts as the command prints them."""
    lines = [
        f"project {summary.project}: {summary.tasks} tasks, {summary.predicted} predicted "
        f"({summary.regions} regions, {summary.empty} with none), {summary.skipped} skipped "
        f"(already hold a {summary.model_version} prediction), {len(summary.failed)} failed; "
        f"{summary.wall_s:.1f} s ({summary.images_per_s:.3f} images/s)"
    ]
    lines += [f"  failed task {f['task']}: {f['error']}" for f in summary.failed]
    return "\n".join(lines)


def summary_json(summary: PrelabelSummary) -> str:
    return json.dumps(summary.as_dict(), indent=2)
