"""samgraph as the ML backend of a real Label Studio (from PyPI, unmodified, in its own virtual environment),
driven through Label Studio's REST API only.

Label Studio is found at ``$SAMGRAPH_LABEL_STUDIO`` (its ``label-studio`` executable), else at
``.lsvenv/bin/label-studio`` in the repository (``python3 -m venv .lsvenv && .lsvenv/bin/pip install
label-studio``, as ``.ci/run`` does) or ``../lsvenv/bin/label-studio`` beside it. Without it the module skips, unless ``SAMGRAPH_REQUIRE_LABEL_STUDIO=1`` makes that
a failure. It starts on loopback with SQLite in a temporary folder, its user and legacy token made by its
own CLI (``label-studio start --username --password --user-token --enable-legacy-api-token``). Its first
start runs every migration (20 s on 2 idle cores, up to 2 minutes on 2 loaded ones); the migrated data
folder is kept in ``~/.cache/samgraph/label-studio/`` (``$SAMGRAPH_LABEL_STUDIO_CACHE``) and copied for
later runs, which start in 3-20 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from models.masks import decode_rle
from tests.integration.conftest import free_port
from tests.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT.parent / "shared" / "data" / "images"
USER, PASSWORD = "samgraph@example.com", "samgraph-test-password"
TOKEN = "5a3c0e1d2b4f6a8c9e0d1f2a3b4c5d6e7f8a9b0c"  # a legacy token (40 hex), set by label-studio's CLI
#: Label Studio's first start (every migration on SQLite) on 2 loaded cores; later starts take ~15 s.
START_TIMEOUT_S = 420
#: The few-shot collection these tests label from (Label Studio's *Extra params* name it): not ``default``,
#: so that the package app's other tests do not find examples there (the OpenAPI fuzzer's /v1/predict
#: cases would run automatic masks on them, minutes, where they answer 404 at once).
COLLECTION = "labelstudio-test"

CONFIG = """
<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="truck" background="#FF0000"/>
    <Label value="dog" background="#0000FF"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="truck" smart="true"/>
    <Label value="dog" smart="true"/>
  </KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true">
    <Label value="truck"/>
    <Label value="dog"/>
  </RectangleLabels>
</View>
"""


def _executable() -> Path | None:
    given = os.environ.get("SAMGRAPH_LABEL_STUDIO")
    candidates = [Path(given)] if given else [ROOT / ".lsvenv" / "bin" / "label-studio", ROOT.parent / "lsvenv" / "bin" / "label-studio"]
    return next((p for p in candidates if p.is_file() and os.access(p, os.X_OK)), None)


def _unavailable(reason: str):
    if os.environ.get("SAMGRAPH_REQUIRE_LABEL_STUDIO") == "1":
        pytest.fail(f"{reason}, and SAMGRAPH_REQUIRE_LABEL_STUDIO=1", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


# At collection, so that a run without Label Studio does not start the package's app for these tests (the
# package-scoped app fixtures are set up before the module's).
if _executable() is None:
    _unavailable("Label Studio not found: set SAMGRAPH_LABEL_STUDIO or install it into .lsvenv")


class LabelStudio:
    """A Label Studio process on loopback, and its REST API with the test user's token."""

    def __init__(self, exe: Path, data_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {
            **os.environ,
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            # samgraph is on loopback: Label Studio refuses local ML backend URLs, and the webhook it creates
            # for the backend, by default
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "PYTHONPATH": "",  # our worktree's path must not leak into Label Studio's interpreter
        }
        args = [str(exe), "start", "--no-browser", "--data-dir", str(data_dir), "--port", str(self.port)]
        args += ["--internal-host", "127.0.0.1", "--host", self.url, "--log-level", "INFO"]
        args += ["--username", USER, "--password", PASSWORD, "--user-token", TOKEN, "--enable-legacy-api-token"]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.api = httpx.Client(base_url=self.url, headers={"Authorization": f"Token {TOKEN}"}, timeout=300)

    def wait_up(self) -> float:
        """Seconds until ``/health`` answers (fails early when the process exits)."""
        t0 = time.monotonic()

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"label-studio exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, START_TIMEOUT_S, f"Label Studio answers /health (log: {self.log_path})", interval_s=1.0)
        return time.monotonic() - t0

    def file_reads(self, project_id: int) -> int:
        """How many times a project's uploaded files were read, from Label Studio's access log (it writes each
        line twice, through two handlers: distinct lines are counted)."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return len({line for line in lines if f'"GET /data/upload/{project_id}/' in line})

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        self.api.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its children
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def _cache_dir(exe: Path) -> Path:
    base = Path(os.environ.get("SAMGRAPH_LABEL_STUDIO_CACHE") or Path.home() / ".cache" / "samgraph" / "label-studio")
    return base / hashlib.sha256(str(exe.resolve()).encode()).hexdigest()[:12]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A running Label Studio; ``startup_s`` holds how long its first start took to answer (with every
    migration when ``migrated`` is False, else from a copy of the cached, migrated data folder)."""
    exe = _executable()
    tmp = tmp_path_factory.mktemp("label-studio")
    data, cache = tmp / "data", _cache_dir(exe)
    migrated = (cache / "label_studio.sqlite3").is_file()
    if migrated:
        shutil.copytree(cache, data)
    ls = LabelStudio(exe, data, tmp / "label-studio.log")
    try:
        ls.startup_s = ls.wait_up()
        ls.migrated = migrated
        print(f"\nLabel Studio up in {ls.startup_s:.1f} s ({'cached migrated database' if migrated else 'first start'})")
        if not migrated:  # keep the migrated folder for the next runs: stop, copy, start again
            first_s = ls.startup_s
            ls.stop()
            shutil.rmtree(cache, ignore_errors=True)
            shutil.copytree(data, cache)
            ls = LabelStudio(exe, data, tmp / "label-studio-2.log")
            print(f"Label Studio restarted from the migrated folder in {ls.wait_up():.1f} s")
            ls.startup_s, ls.migrated = first_s, False
        yield ls
    finally:
        ls.stop()


def _ok(r: httpx.Response, status: int = 200) -> dict:
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:800]}"
    return r.json()


@pytest.fixture(scope="module")
def project(label_studio, app_url):
    """A project (BrushLabels, KeyPointLabels, RectangleLabels over an Image) with the photos uploaded as
    tasks, and samgraph connected as its interactive ML backend (Label Studio checks /health and /setup)."""
    ls = label_studio.api
    pid = _ok(ls.post("/api/projects", json={"title": "samgraph test", "label_config": CONFIG}), 201)["id"]
    photos = ["truck.jpg", "dog.jpg"]
    files = [(f"file{i}", (name, (IMAGES / name).read_bytes(), "image/jpeg")) for i, name in enumerate(photos)]
    imported = _ok(ls.post(f"/api/projects/{pid}/import", files=files), 201)
    assert imported["task_count"] == len(photos)
    tasks = _ok(ls.get("/api/tasks", params={"project": pid}))["tasks"]
    by_photo = {name: next(t for t in tasks if t["data"]["image"].endswith(name)) for name in photos}
    connection = {"url": f"{app_url}/integrations/label-studio", "project": pid, "is_interactive": True}
    backend = ls.post("/api/ml", json={**connection, "title": "samgraph", "extra_params": {"collection": COLLECTION}})
    ml = _ok(backend, 201)
    assert ml["state"] == "CO", ml  # connected: /health and /setup answered
    return {"id": pid, "ml": ml, "tasks": by_photo}


def _keypoint(x_pct: float, y_pct: float, w: int, h: int, label: str = "truck") -> dict:
    return {
        "id": "kp1",
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "is_positive": True,
        "value": {"x": x_pct, "y": y_pct, "width": 0.6, "keypointlabels": [label]},
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def test_an_interactive_click_answers_the_mask_of_v1_segment_and_the_next_click_is_a_cache_hit(
    label_studio, project, client
):
    from serve_app.labelstudio import brush_mask

    t0 = time.monotonic()
    task = project["tasks"]["truck.jpg"]
    w, h = 1800, 1200  # truck.jpg
    ml_id = project["ml"]["id"]
    uploads_before = label_studio.file_reads(project["id"])
    before = _ok(client.get("/v1/stats"))["cache"]

    def click(x_px: float, y_px: float) -> tuple[dict, float]:
        ctx = {"result": [_keypoint(x_px / w * 100, y_px / h * 100, w, h)]}
        t = time.monotonic()
        body = _ok(label_studio.api.post(f"/api/ml/{ml_id}/interactive-annotating", json={"task": task["id"], "context": ctx}))
        assert "errors" not in body, body
        return body["data"], time.monotonic() - t

    first, first_s = click(900.0, 700.0)
    (region,) = first["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["truck"]
    assert (region["from_name"], region["to_name"]) == ("tag", "image")
    assert (region["original_width"], region["original_height"]) == (w, h)
    assert first["model_version"] == project["ml"]["model_version"] and 0 <= first["score"] <= 1
    from_ls = brush_mask(region["value"]["rle"], w, h)

    after_first = _ok(client.get("/v1/stats"))["cache"]
    # the photo is encoded at most once, for the first click (not at all when an earlier test of the package's
    # app sent the same bytes: the owner's cache answers then)
    assert after_first["encodes"] - before["encodes"] <= 1

    import base64

    photo = base64.b64encode((IMAGES / "truck.jpg").read_bytes()).decode()
    prompts = [{"points": [[900.0, 700.0, 1]]}]
    direct = _ok(client.post("/v1/segment", json={"image": {"base64": photo}, "prompts": prompts, "max_masks": 1}))
    assert direct["encode_cached"] is True  # the click's encode is the one cached
    from_segment = decode_rle(direct["results"][0]["masks"][0]["rle"])
    assert from_segment.any()
    assert _iou(from_ls, from_segment) >= 0.999

    second, second_s = click(400.0, 500.0)
    assert len(second["result"]) == 1
    after_second = _ok(client.get("/v1/stats"))["cache"]
    assert after_second["encodes"] == after_first["encodes"]  # the second click did not encode again
    assert after_second["hits"] > after_first["hits"]
    assert label_studio.file_reads(project["id"]) - uploads_before == 1  # the image was fetched from Label Studio once, for the first click
    print(
        f"\nLabel Studio start {label_studio.startup_s:.1f} s; first click {first_s:.2f} s, second {second_s:.2f} s; "
        f"test {time.monotonic() - t0:.1f} s"
    )


def test_a_config_samgraph_cannot_answer_is_refused_when_connecting(label_studio, app_url, client):
    xml = CONFIG.replace("<Image", '<Video name="video" value="$video"/><Image')
    pid = _ok(label_studio.api.post("/api/projects", json={"title": "video project", "label_config": xml}), 201)["id"]
    url = f"{app_url}/integrations/label-studio"
    refused = label_studio.api.post("/api/ml", json={"url": url, "project": pid, "title": "samgraph"})
    assert refused.status_code == 400 and "422" in refused.text, refused.text[:500]
    # what Label Studio was told (its message shows the status only): the reason, as JSON
    r = client.post("/integrations/label-studio/setup", json={"project": f"{pid}.0", "schema": xml})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "unsupported_label_config" and "<Video>" in r.json()["error"]["message"]


def test_a_task_whose_image_cannot_be_fetched_is_a_4xx_with_the_reason(project, client):
    body = {
        "tasks": [{"id": 99, "data": {"image": "/data/upload/0/missing.jpg"}}],
        "project": f"{project['id']}.0",
        "label_config": CONFIG,
        "params": {"context": {"result": [_keypoint(50, 50, 100, 100)]}},
    }
    r = client.post("/integrations/label-studio/predict", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    # the reason names the image and Label Studio's answer (1.23 answers 500 for a missing upload)
    assert error["code"] == "image_unavailable" and "missing.jpg: answered" in error["message"], error
    assert json.loads(client.get("/healthz").text)["status"] == "ok"


@pytest.fixture()
def fewshot_examples(client):
    """One labelled example per label of the config in :data:`COLLECTION` (what pre-labelling on a SAM 2
    model labels from: the project's connection names it), deleted afterwards."""
    import base64

    added = []
    for name, label, box in (("truck.jpg", "truck", [100, 200, 1700, 1100]), ("dog.jpg", "dog", [50, 50, 400, 300])):
        photo = base64.b64encode((IMAGES / name).read_bytes()).decode()
        body = {"image": {"base64": photo}, "box_xyxy": box, "label": label, "collection": COLLECTION}
        added += _ok(client.post("/v1/examples", json=body))["ids"]
    yield added
    for example_id in added:  # the collection is left empty: later tests' tasks get no label from it
        _ok(client.delete(f"/v1/examples/{example_id}", params={"collection": COLLECTION}))


def test_retrieve_predictions_prelabels_every_task_with_the_configs_label_names(
    label_studio, project, client, fewshot_examples
):
    ls = label_studio.api
    t0 = time.monotonic()
    action = ls.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project["id"]},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    _ok(action)
    elapsed = time.monotonic() - t0
    version = project["ml"]["model_version"]
    labels = {"truck", "dog"}
    regions = 0
    for name, task in project["tasks"].items():
        predictions = _ok(ls.get("/api/predictions", params={"task": task["id"]}))
        ours = [p for p in predictions if p["model_version"] == version]
        assert len(ours) == 1, (name, predictions)
        for region in ours[0]["result"]:
            assert region["type"] == "brushlabels" and set(region["value"]["brushlabels"]) <= labels
            assert region["from_name"] == "tag" and 0 <= region["score"] <= 1
            regions += 1
    assert regions > 0  # the examples label some of the automatic masks
    print(f"\nretrieve predictions: {len(project['tasks'])} tasks in {elapsed:.1f} s, {regions} regions")


def test_label_studios_basic_auth_carries_the_api_key(label_studio, app_args, app_url, tmp_path_factory):
    """A side app with an API key: Label Studio connects only with basic auth whose password is the key,
    and its clicks then go through."""
    from tests.integration.conftest import side_app

    key = "ls-itest-key-0123456789abcdef"
    keys = tmp_path_factory.mktemp("ls-auth") / "keys.txt"
    keys.write_text(f"{key}\n")
    auth = {"keys_file": str(keys), "keys_env": None}
    ls = label_studio.api
    pid = _ok(ls.post("/api/projects", json={"title": "secured project", "label_config": CONFIG}), 201)["id"]
    with side_app("lsauth", {**app_args, "auth": auth}) as prefix:
        url = f"{app_url}{prefix}/integrations/label-studio"
        assert httpx.get(f"{url}/health").status_code == 401
        refused = ls.post("/api/ml", json={"url": url, "project": pid, "title": "no key"})
        assert refused.status_code == 400 and "authentication parameters" in refused.text, refused.text[:300]
        wrong = {"auth_method": "BASIC_AUTH", "basic_auth_user": "samgraph", "basic_auth_pass": "not-the-key-0123456789"}
        assert ls.post("/api/ml", json={"url": url, "project": pid, "title": "wrong", **wrong}).status_code == 400
        basic = {"auth_method": "BASIC_AUTH", "basic_auth_user": "samgraph", "basic_auth_pass": key}
        ml = _ok(ls.post("/api/ml", json={"url": url, "project": pid, "title": "samgraph", **basic}), 201)
        assert ml["state"] == "CO", ml


def test_a_polygon_project_gets_polygons_that_rasterise_back_to_the_mask(label_studio, app_url, client):
    import base64

    from models.polygons import polygons_to_mask

    xml = CONFIG.replace("BrushLabels", "PolygonLabels")
    ls = label_studio.api
    pid = _ok(ls.post("/api/projects", json={"title": "polygon project", "label_config": xml}), 201)["id"]
    photo = (IMAGES / "truck.jpg").read_bytes()
    _ok(ls.post(f"/api/projects/{pid}/import", files=[("file", ("truck.jpg", photo, "image/jpeg"))]), 201)
    (task,) = _ok(ls.get("/api/tasks", params={"project": pid}))["tasks"]
    url = f"{app_url}/integrations/label-studio"
    ml = _ok(ls.post("/api/ml", json={"url": url, "project": pid, "is_interactive": True, "title": "samgraph"}), 201)
    w, h = 1800, 1200
    ctx = {"result": [_keypoint(900 / w * 100, 700 / h * 100, w, h)]}
    body = _ok(ls.post(f"/api/ml/{ml['id']}/interactive-annotating", json={"task": task["id"], "context": ctx}))
    regions = body["data"]["result"]
    assert regions and all(r["type"] == "polygonlabels" and r["value"]["polygonlabels"] == ["truck"] for r in regions)
    rings = [{"exterior": [[x / 100 * w, y / 100 * h] for x, y in r["value"]["points"]], "holes": []} for r in regions]
    from_ls = polygons_to_mask(rings, h, w)

    request = {"image": {"base64": base64.b64encode(photo).decode()}, "prompts": [{"points": [[900.0, 700.0, 1]]}]}
    direct = _ok(client.post("/v1/segment", json={**request, "max_masks": 1, "mask_format": "polygon"}))
    parts = direct["results"][0]["masks"][0]["polygons"]
    expected = polygons_to_mask([{"exterior": p["exterior"], "holes": []} for p in parts], h, w)
    assert len(regions) == len(parts) and _iou(from_ls, expected) >= 0.999


def _project_with_photos(ls: httpx.Client, title: str, xml: str, photos: list[str]) -> tuple[int, dict[str, dict]]:
    """A project with ``photos`` uploaded as tasks: (its id, its tasks by photo name)."""
    pid = _ok(ls.post("/api/projects", json={"title": title, "label_config": xml}), 201)["id"]
    files = [(f"file{i}", (name, (IMAGES / name).read_bytes(), "image/jpeg")) for i, name in enumerate(photos)]
    assert _ok(ls.post(f"/api/projects/{pid}/import", files=files), 201)["task_count"] == len(photos)
    tasks = _ok(ls.get("/api/tasks", params={"project": pid}))["tasks"]
    return pid, {name: next(t for t in tasks if t["data"]["image"].endswith(name)) for name in photos}


# ~65 s, most of it a local Ray and the pipeline's actor pools starting: past the default run's budget. The
# default run drives pre-labelling through Label Studio's own "Retrieve predictions" (above) and the job's
# parts in tests/unit/test_batch.py and tests/unit/test_labelstudio.py.
@pytest.mark.slow
def test_samgraph_labelstudio_prelabel_predicts_every_task_of_a_project_through_ray_data(label_studio, tmp_path):
    """``samgraph labelstudio prelabel`` (a fresh local Ray, random weights) on a project of three photos:
    every task gets one prediction whose brush masks, labelled with the config's names by few-shot examples
    in a store of the job's own, decode to non-empty masks of the photo's size; a second run skips them."""
    import subprocess
    import sys

    from PIL import Image

    from deployments.runtime.vectorstore import ExampleStore
    from serve_app.labelstudio import brush_mask
    from serve_app.local import LocalPipeline
    from tests.conftest import MODEL_ID

    t0 = time.monotonic()
    ls = label_studio.api
    photos = ["truck.jpg", "dog.jpg", "cars.jpg"]
    pid, tasks = _project_with_photos(ls, "prelabel project", CONFIG, photos)
    store = tmp_path / "qdrant"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local", "SAMGRAPH_WEIGHTS": "random"}
    with ExampleStore(path=store) as examples:  # the job's store: box-shaped examples, embedded by random CLIP
        pipe = LocalPipeline.load(MODEL_ID, weights="random", store=examples)
        for name, label, (x0, y0, x1, y1) in (("truck.jpg", "truck", (100, 200, 1700, 1100)), ("dog.jpg", "dog", (50, 50, 400, 300))):
            image = np.asarray(Image.open(IMAGES / name).convert("RGB"))
            mask = np.zeros(image.shape[:2], bool)
            mask[y0:y1, x0:x1] = True
            pipe.add_example(image, label, mask=mask, collection=COLLECTION)
    setup_s = time.monotonic() - t0
    amg = ["amg.points_per_side=4", "amg.pred_iou_thresh=0", "amg.stability_score_thresh=0"]
    command = [sys.executable, "-m", "serve_app.cli.main", "labelstudio", "prelabel", str(pid), "--url", label_studio.url]
    command += ["--api-key", TOKEN, "--weights", "random", "--collection", COLLECTION, "--quiet", "--json"]
    command += [f"--set={s}" for s in [f"retriever.path={store}", *amg]]

    def prelabel() -> dict:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout)

    t1 = time.monotonic()
    summary = prelabel()
    run_s = time.monotonic() - t1
    version = f"samgraph-{MODEL_ID}"
    assert summary["model_version"] == version
    assert (summary["tasks"], summary["predicted"], summary["skipped"], summary["failed"]) == (3, 3, 0, [])
    for name, task in tasks.items():
        (ours,) = [p for p in _ok(ls.get("/api/predictions", params={"task": task["id"]})) if p["model_version"] == version]
        with Image.open(IMAGES / name) as im:
            w, h = im.size
        assert ours["result"], name  # min_score 0: every automatic mask is labelled by a nearest example
        for region in ours["result"]:
            assert region["type"] == "brushlabels" and region["value"]["brushlabels"][0] in {"truck", "dog"}
            assert (region["from_name"], region["to_name"], region["original_width"], region["original_height"]) == ("tag", "image", w, h)
            assert 0 <= region["score"] <= 1 and brush_mask(region["value"]["rle"], w, h).any()
        assert ours["score"] == pytest.approx(np.mean([r["score"] for r in ours["result"]]))
    again = prelabel()  # every task already holds this version's prediction: nothing to run (no Ray start)
    assert (again["tasks"], again["predicted"], again["skipped"]) == (3, 0, 3)
    print(
        f"\nprelabel: set-up {setup_s:.1f} s, run {run_s:.1f} s (pipeline {summary['wall_s']:.1f} s, "
        f"{summary['regions']} regions), test {time.monotonic() - t0:.1f} s"
    )
