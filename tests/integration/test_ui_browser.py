"""The annotation page at /ui, driven in Debian's Chromium (headless) by Playwright, against the running app.

The package app serves one model (SAM 2 tiny): the model picker lists it and every call carries its
``model_id``; a text prompt there is answered by CLIP ranking. The page's rendering of a concept answer
(SAM 3's instances) is driven with a literal answer object.

No browser download: Playwright launches ``/usr/bin/chromium`` (``.ci/run`` installs it with apt). Where
it is absent the browser tests skip, unless ``SAMGRAPH_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes
that a failure. Every mask the page draws is compared pixel for pixel with the API's answer, decoded
by pycocotools. A screenshot after a click is written to ``artifacts/ui_click.png`` (not committed).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.masks import decode_rle, encode_rle, rle_bbox_xyxy
from models.polygons import mask_to_polygons
from tests.conftest import MODEL_ID, REPO, TRUCK_BOX

VIEWPORT = {"width": 1280, "height": 720}
COLLECTION = "ui_test"
ARTIFACTS = REPO / "artifacts"
FG = (500, 375)
BG = (1125, 625)
UI_JS = ("app.js", "api.js", "state.js", "status.js", "overlay.js", "prompts.js", "image.js", "annotations.js",
         "predict.js", "keyboard.js", "dom.js", "rle.js", "models.js", "find.js")  # ES modules: served as JavaScript or not run at all
UI_FILES = ("index.html", "style.css", *UI_JS)


def _new_page(browser, app_url: str):
    page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
    page.set_default_timeout(60_000)
    page.goto(f"{app_url}/ui")
    page.wait_for_function("document.getElementById('counts').dataset.total !== undefined")
    page.wait_for_function("document.getElementById('model').dataset.modelId !== undefined")  # GET /v1/models
    return page


@pytest.fixture
def page(browser, app_url):
    pg = _new_page(browser, app_url)
    yield pg
    pg.close()


# ---------------------------------------------------------------- helpers
def _is_post(path: str):
    return lambda r: r.url.split("?")[0].endswith(path) and r.request.method == "POST"


def _wait_idle(page) -> None:
    page.wait_for_function("document.body.dataset.busy === '0'")


def _renders(page) -> int:
    return int(page.get_attribute("#overlay", "data-renders") or 0)


def _overlay(page) -> np.ndarray:
    """(H, W) bool: the overlay canvas's pixels with any alpha, at the image's own resolution."""
    url = page.evaluate("document.getElementById('overlay').toDataURL('image/png')")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        return np.asarray(im.convert("RGBA"))[..., 3] > 0


def _no_error(page) -> None:
    assert page.locator("#error").is_hidden(), page.inner_text("#error")


def _screen(page, x: float, y: float) -> tuple[float, float]:
    """Screen coordinates of image pixel (x, y)."""
    box = page.locator("#prompts").bounding_box()
    w, h = (int(page.get_attribute("#overlay", a)) for a in ("width", "height"))
    return box["x"] + x * box["width"] / w, box["y"] + y * box["height"] / h


def _segment(page, action) -> tuple[dict, dict]:
    """Run ``action`` (a click, a drag, a key), wait for its /v1/segment answer to be drawn.

    Returns:
        (the request body the page sent, the API's answer).
    """
    n = _renders(page)
    with page.expect_response(_is_post("/v1/segment")) as info:
        action()
    response = info.value
    assert response.ok, response.text()
    assert response.request.post_data_json["model_id"] == MODEL_ID
    page.wait_for_function(f"Number(document.getElementById('overlay').dataset.renders) > {n}")
    _wait_idle(page)
    _no_error(page)
    return response.request.post_data_json, response.json()


def _predict(page, action) -> list[dict]:
    """Run ``action`` (the button, the key); wait until the instances of its /v1/predict are listed."""
    with page.expect_response(_is_post("/v1/predict"), timeout=180_000) as info:
        action()
    assert info.value.ok, info.value.text()
    assert info.value.request.post_data_json["model_id"] == MODEL_ID
    instances = info.value.json()["instances"]
    assert instances
    page.wait_for_function(f"document.querySelectorAll('#instances li[data-state=\"open\"]').length === {len(instances)}")
    _wait_idle(page)
    _no_error(page)
    return instances


def _open_truck(page, truck_path: Path) -> dict:
    with page.expect_response(_is_post("/v1/segment")) as info:
        page.set_input_files("#file", str(truck_path))
    page.wait_for_selector("#stage:not([hidden])")
    _wait_idle(page)
    _no_error(page)
    assert info.value.json()["model_id"] == MODEL_ID  # (Playwright does not show a multipart body with a file)
    return info.value.json()


def _set_collection(page, name: str) -> None:
    page.fill("#collection", name)
    page.press("#collection", "Tab")  # "change" fires on blur
    page.wait_for_function(f"document.getElementById('counts').textContent.includes('{name}')")


# ---------------------------------------------------------------- static files
def test_ui_is_served_by_the_ingress(client):
    r = client.get("/ui", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name in UI_FILES:
        r = client.get(f"/ui/{name}")
        assert r.status_code == 200, name
        assert "http://" not in r.text and "https://" not in r.text, f"{name} must not load anything from elsewhere"
        if name in UI_JS:
            assert "javascript" in r.headers["content-type"], name
    missing = client.get("/ui/nope.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_ui_files_ship_in_the_wheel():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from fnmatch import fnmatch

    from serve_app.ingress.http import UI_DIR

    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["serve_app"]
    files = sorted(p.relative_to(UI_DIR.parent).as_posix() for p in UI_DIR.iterdir())
    assert sorted(f"ui/{n}" for n in UI_FILES) == files
    for f in files:
        assert any(fnmatch(f, g) for g in globs), f"{f} is not in [tool.setuptools.package-data]"


# ---------------------------------------------------------------- the RLE decoder
def test_browser_rle_decoder_matches_pycocotools(page):
    rng = np.random.default_rng(0)
    masks = [
        np.zeros((7, 5), bool),
        np.ones((7, 5), bool),
        np.pad(np.ones((1, 1), bool), ((3, 3), (2, 2))),
        rng.random((37, 53)) > 0.5,
        rng.random((64, 48)) > 0.97,
        np.pad(np.ones((40, 30), bool), ((5, 1), (0, 9))),  # runs that wrap columns
    ]
    big = np.zeros((1200, 1800), bool)  # truck-sized: counts far beyond one 5-bit character
    big[100:1100, 900:1700] = True
    masks.append(big)
    rles = [encode_rle(m) for m in masks]
    out = page.evaluate(
        """async (rles) => {
            const { decodeRle, toRowMajor } = await import('./rle.js');
            return rles.map((r) => { const m = decodeRle(r); return { data: Array.from(toRowMajor(m)).join(''), area: m.area, bbox: m.bbox }; });
        }""",
        rles,
    )
    for mask, rle, got in zip(masks, rles, out):
        decoded = np.frombuffer(got["data"].encode(), np.uint8).reshape(mask.shape) == ord("1")
        np.testing.assert_array_equal(decoded, decode_rle(rle))
        assert got["area"] == int(mask.sum())
        assert got["bbox"] == (rle_bbox_xyxy(rle) if mask.any() else None)
    bad = page.evaluate("async () => { const { decodeRle } = await import('./rle.js'); try { decodeRle({size: [4, 4], counts: '3'}); return 'no error'; } catch (e) { return e.message; } }")
    assert "cover" in bad


# ---------------------------------------------------------------- the annotation flow
def test_click_box_accept_predict_export(page, client, truck_path, tmp_path):
    from pycocotools.coco import COCO

    _set_collection(page, COLLECTION)
    opened = _open_truck(page, truck_path)
    assert opened["image_id"] == hashlib.sha256(truck_path.read_bytes()).hexdigest()
    assert (opened["width"], opened["height"]) == (1800, 1200)
    assert page.get_attribute("#stage", "data-image-id") == opened["image_id"]
    page.wait_for_selector("#warning:not([hidden])")  # from /readyz: this app's CLIP has random weights
    assert "random weights" in page.inner_text("#warning")
    assert not _overlay(page).any()

    # Left click: a foreground point, sent by image_id with no image bytes; 3 candidates drawn as overlay.
    req, out = _segment(page, lambda: page.mouse.click(*_screen(page, *FG)))
    assert "image" not in req and req["image_id"] == opened["image_id"] and req["return_logits"] is True
    (prompt,) = req["prompts"]
    assert "mask_input" not in prompt and len(prompt["points"]) == 1 and prompt["points"][0][2] == 1
    assert np.allclose(prompt["points"][0][:2], FG, atol=2.5)
    masks = out["results"][0]["masks"]
    assert len(masks) == 3 and out["encode_cached"] is True
    first = decode_rle(masks[0]["rle"])
    assert first.any()
    np.testing.assert_array_equal(_overlay(page), first)
    click_ms = float(page.get_attribute("#status", "data-click-ms"))
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "ui_click.png"
    page.screenshot(path=str(shot))
    print(f"\nscreenshot after a click: {shot} (click to overlay {click_ms:.0f} ms)")

    # Candidates cycle; undo and redo need no request.
    page.keyboard.press("c")
    np.testing.assert_array_equal(_overlay(page), decode_rle(masks[1]["rle"]))
    assert page.inner_text("#candidate").startswith("2/3")
    page.keyboard.press("Control+z")
    assert not _overlay(page).any()
    page.keyboard.press("Control+Shift+z")
    np.testing.assert_array_equal(_overlay(page), decode_rle(masks[1]["rle"]))
    page.keyboard.press("Shift+c")
    np.testing.assert_array_equal(_overlay(page), first)

    # Right click: a background point, refining with the chosen candidate's low-res logits.
    req, out = _segment(page, lambda: page.mouse.click(*_screen(page, *BG), button="right"))
    (prompt,) = req["prompts"]
    assert [p[2] for p in prompt["points"]] == [1, 0] and np.allclose(prompt["points"][1][:2], BG, atol=2.5)
    assert prompt["mask_input"] == masks[0]["low_res_logits"]
    (refined,) = out["results"][0]["masks"]
    np.testing.assert_array_equal(_overlay(page), decode_rle(refined["rle"]))

    # Drag: a box over the truck; the mask changes.
    def drag():
        page.mouse.move(*_screen(page, TRUCK_BOX[0], TRUCK_BOX[1]))
        page.mouse.down()
        page.mouse.move(*_screen(page, 900, 560), steps=4)
        page.mouse.move(*_screen(page, TRUCK_BOX[2], TRUCK_BOX[3]), steps=4)
        page.mouse.up()

    before = _overlay(page)
    req, out = _segment(page, drag)
    (prompt,) = req["prompts"]
    assert np.allclose(prompt["box_xyxy"], TRUCK_BOX, atol=2.5) and len(prompt["points"]) == 2
    assert prompt["mask_input"] == refined["low_res_logits"]
    (boxed,) = out["results"][0]["masks"]
    after = _overlay(page)
    np.testing.assert_array_equal(after, decode_rle(boxed["rle"]))
    assert (after != before).any(), "the box did not change the mask"

    # Accept with a label: stored as an example in the collection; the label joins the completions.
    page.keyboard.press("l")
    page.keyboard.type("truck")
    with page.expect_response(_is_post("/v1/examples")) as info:
        page.keyboard.press("Enter")
    assert info.value.ok, info.value.text()
    sent = info.value.request.post_data_json
    assert sent["mask_rle"] == boxed["rle"] and sent["label"] == "truck" and sent["collection"] == COLLECTION
    assert sent["model_id"] == MODEL_ID
    page.wait_for_function("document.querySelector('#labels option[value=\"truck\"]') !== null")
    _wait_idle(page)
    _no_error(page)
    assert client.get("/v1/examples", params={"collection": COLLECTION}).json()["counts"] == {"truck": 1}
    assert page.inner_text("#annotation-count") == "1" and not _overlay(page).any()

    # Predict: every instance listed with its label and confidence; one click accepts a suggestion.
    instances = _predict(page, lambda: page.click("#predict"))
    print(f"predict: {[(inst['label'], round(inst['confidence'] or 0, 3)) for inst in instances]}")
    rows = page.locator("#instances li")
    for i, inst in enumerate(instances):
        row = rows.nth(i)
        assert row.locator("input").input_value() == (inst["label"] or "")
        assert row.locator(".conf").inner_text() == ("no vote" if inst["label"] is None else f"{inst['confidence'] * 100:.0f}%")
    assert _overlay(page).any()  # the instances are drawn
    expected = [("truck", boxed["rle"])]
    assert instances[0]["label"] == "truck"  # the only example's label: every voter votes for it
    assert rows.nth(0).locator("button").inner_text() == "Accept"
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    rows.nth(0).locator("button").click()
    page.wait_for_function("document.querySelector('#instances li[data-index=\"0\"]').dataset.state === 'accepted'")
    _wait_idle(page)
    assert posts == [], "accepting a suggestion stores no example"
    expected.append(("truck", instances[0]["rle"]))

    # Predict again (key P); correcting a suggestion stores the new label as an example.
    instances = _predict(page, lambda: page.keyboard.press("p"))
    rows.nth(0).locator("input").fill("cab")
    assert rows.nth(0).locator("button").inner_text() == "Correct"
    with page.expect_response(_is_post("/v1/examples")) as info:
        rows.nth(0).locator("button").click()
    assert info.value.ok, info.value.text()
    assert info.value.request.post_data_json["mask_rle"] == instances[0]["rle"]
    page.wait_for_function("document.querySelector('#instances li[data-index=\"0\"]').dataset.state === 'corrected'")
    expected.append(("cab", instances[0]["rle"]))
    page.wait_for_function("document.querySelector('#labels option[value=\"cab\"]') !== null")
    _wait_idle(page)
    _no_error(page)
    assert client.get("/v1/examples", params={"collection": COLLECTION}).json()["counts"] == {"truck": 1, "cab": 1}
    assert page.inner_text("#annotation-count") == str(len(expected))

    # Export: COCO JSON that pycocotools loads, with the accepted masks.
    with page.expect_download() as dl:
        page.keyboard.press("e")
    path = tmp_path / "coco.json"
    dl.value.save_as(path)
    coco = COCO(str(path))
    (image,) = coco.dataset["images"]
    assert (image["width"], image["height"], image["file_name"]) == (1800, 1200, "truck.jpg")
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == len(expected)
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    for ann, (label, rle) in zip(anns, expected):
        assert names[ann["category_id"]] == label and ann["iscrowd"] == 0 and ann["image_id"] == image["id"]
        mask = decode_rle(rle)
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
        x0, y0, x1, y1 = rle_bbox_xyxy(rle)
        assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0] and ann["area"] == int(mask.sum())
    json.loads(path.read_text())  # plain JSON

    # Export as polygons (traced by the service): the same masks, each as polygons unless it has holes.
    page.select_option("#export-format", "polygon")
    with page.expect_download() as dl:
        page.keyboard.press("e")
    path = tmp_path / "coco_polygons.json"
    dl.value.save_as(path)
    coco = COCO(str(path))
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == len(expected)
    as_polygons = 0
    for ann, (_, rle) in zip(anns, expected):
        mask = decode_rle(rle)
        has_holes = any(p["holes"] for p in mask_to_polygons(mask))
        assert isinstance(ann["segmentation"], list) != has_holes
        as_polygons += not has_holes
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
        assert ann["area"] == int(mask.sum())
    assert as_polygons >= 1  # here 2 of the 3 (the third has holes)


def test_page_fits_1280x720_and_lists_shortcuts(page, truck_path):
    _open_truck(page, truck_path)
    size = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    assert size[0] <= VIEWPORT["width"] and size[1] <= VIEWPORT["height"], size
    for sel in ("#stage", "#predict", "#export", "#accept", "#label", "#model", "#text", "#find"):
        box = page.locator(sel).bounding_box()
        assert box and box["x"] >= 0 and box["y"] >= 0, sel
        assert box["x"] + box["width"] <= VIEWPORT["width"] + 0.5 and box["y"] + box["height"] <= VIEWPORT["height"] + 0.5, sel
    keys = set(page.locator("#shortcuts kbd").all_inner_texts())
    assert {"C", "Shift", "Ctrl", "Z", "Y", "Esc", "L", "T", "Enter", "P", "A", "V", "E", "O"} <= keys, keys


def test_drop_sends_the_image_once(page, truck_path):
    data = base64.b64encode(truck_path.read_bytes()).decode()
    with page.expect_response(_is_post("/v1/segment")) as info:
        page.evaluate(
            """(b64) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], 'dropped.jpg', { type: 'image/jpeg' }));
                document.getElementById('viewer').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
            }""",
            data,
        )
    out = info.value.json()
    assert out["image_id"] == hashlib.sha256(truck_path.read_bytes()).hexdigest()
    assert out["encode_cached"] is True  # the server knew these bytes already
    page.wait_for_selector("#stage:not([hidden])")
    _wait_idle(page)
    _no_error(page)
    def shift_click():
        page.keyboard.down("Shift")
        page.mouse.click(*_screen(page, *FG))
        page.keyboard.up("Shift")

    req, _ = _segment(page, shift_click)
    assert req["prompts"][0]["points"][0][2] == 0  # shift+click: background


def test_api_errors_are_shown(page, truck_path):
    page.set_input_files("#file", files=[{"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"not an image"}])
    page.wait_for_selector("#error:not([hidden])")
    assert page.get_attribute("#error", "data-code") == "invalid_image"
    assert "POST /v1/segment" in page.inner_text("#error") and "HTTP 400" in page.inner_text("#error")
    page.click("#error-close")
    _open_truck(page, truck_path)
    _set_collection(page, "no_such_collection")
    page.click("#predict")
    page.wait_for_selector("#error:not([hidden])")
    assert page.get_attribute("#error", "data-code") == "unknown_collection"
    assert "no_such_collection" in page.inner_text("#error")


# ---------------------------------------------------------------- models and text prompts
def _union(rles, shape=(1200, 1800)) -> np.ndarray:
    """(H, W) bool: the union of COCO RLE masks (all False for none)."""
    return np.logical_or.reduce([np.zeros(shape, bool), *(decode_rle(r) for r in rles)])


def _found_rows(page, n: int):
    page.wait_for_function(f"document.querySelectorAll('#found li').length === {n}")
    return page.locator("#found li")


def _find_text(page, action) -> tuple[dict, dict]:
    """Run ``action`` (Enter in the text box); wait until its /v1/segment answer's candidates are listed.

    Returns:
        (the request body the page sent, the answer's one result).
    """
    with page.expect_response(_is_post("/v1/segment"), timeout=120_000) as info:
        action()
    assert info.value.ok, info.value.text()
    (result,) = info.value.json()["results"]
    n = len(result.get("masks") or result.get("instances") or [])
    page.wait_for_function(f"document.getElementById('found-count').textContent === '{n} open of {n}'")
    _wait_idle(page)
    _no_error(page)
    print(f"text prompt answered in {info.value.json()['timing_ms']['total']:.0f} ms (server)")
    return info.value.request.post_data_json, result


def test_model_picker_and_clip_ranked_text_prompt(page, client, truck_path):
    """The picker lists the served models (the default chosen, with its family); a text prompt on SAM 2 is
    answered by CLIP ranking: every candidate drawn and listed with its text_score, to accept or reject."""
    served = client.get("/v1/models").json()
    options = page.locator("#model option")
    assert options.evaluate_all("os => os.map((o) => o.value)") == [m["model_id"] for m in served["models"]]
    assert page.input_value("#model") == served["default"] == MODEL_ID
    assert page.get_attribute("#model", "data-model-id") == MODEL_ID
    (entry,) = served["models"]
    assert options.first.inner_text() == f"{MODEL_ID} ({entry['family']})" and entry["family"] == "sam2"
    info = page.inner_text("#model-info")
    assert info.startswith("sam2 · can: points, boxes") and "automatic masks" in info and "concept" not in info
    assert page.is_disabled("#find")  # no image yet
    assert page.is_enabled("#text") and page.is_disabled("#score-thresh")  # CLIP ranking has no threshold
    _set_collection(page, "ui_text_test")
    _open_truck(page, truck_path)

    page.keyboard.press("Escape")  # leave the collection's neighbour field: keys are shortcuts again
    page.keyboard.press("t")
    page.keyboard.type("truck")
    sent, result = _find_text(page, lambda: page.keyboard.press("Enter"))
    assert sent["prompts"] == [{"text": "truck"}] and sent["score_thresh"] == 0.5 and sent["model_id"] == MODEL_ID
    assert result["text_method"] == "clip_rank"
    masks = result["masks"]
    assert masks and all(m["rle"] for m in masks)
    rows = _found_rows(page, len(masks))
    assert page.get_attribute("#text-method", "data-method") == "clip_rank"
    assert "CLIP" in page.inner_text("#text-method")
    assert rows.locator(".conf").all_inner_texts() == [f"{m['text_score']:.3f}" for m in masks]
    assert rows.locator("input").evaluate_all("xs => xs.map((x) => x.value)") == ["truck"] * len(masks)
    np.testing.assert_array_equal(_overlay(page), _union(m["rle"] for m in masks))

    # Reject the first: gone from the list and the overlay, with no request.
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    rows.nth(0).locator("button.reject").click()
    rows = _found_rows(page, len(masks) - 1)
    np.testing.assert_array_equal(_overlay(page), _union(m["rle"] for m in masks[1:]))
    assert posts == []

    # Ask again; accept the first: stored as an example (its RLE, the text as label, the model) and annotated.
    _, result = _find_text(page, lambda: page.press("#text", "Enter"))
    masks = result["masks"]
    rows = _found_rows(page, len(masks))
    with page.expect_response(_is_post("/v1/examples")) as info:
        rows.nth(0).locator("button.accept").click()
    assert info.value.ok, info.value.text()
    sent = info.value.request.post_data_json
    assert sent["mask_rle"] == masks[0]["rle"] and sent["label"] == "truck" and sent["model_id"] == MODEL_ID
    page.wait_for_function("document.querySelector('#found li[data-index=\"0\"]').dataset.state === 'accepted'")
    _wait_idle(page)
    _no_error(page)
    assert page.inner_text("#annotation-count") == "1"
    assert rows.nth(0).locator("button.reject").count() == 0
    np.testing.assert_array_equal(_overlay(page), _union(m["rle"] for m in masks[1:]))


def test_concept_instances_render_to_accept_or_reject(page, truck_path):
    """A concept answer (SAM 3's ``instances``, here a literal object): every instance listed with its score
    and drawn; × rejects one, ✓ stores one; the controls follow the chosen model's capabilities."""
    _set_collection(page, "ui_concept_test")
    _open_truck(page, truck_path)
    boxes = [(100, 200, 500, 600), (900, 300, 1300, 700), (1400, 800, 1700, 1100)]
    instances = []
    for score, (x0, y0, x1, y1) in zip((0.91, 0.74, 0.55), boxes):
        mask = np.zeros((1200, 1800), bool)
        mask[y0:y1, x0:x1] = True
        rle = encode_rle(mask)
        instances.append({"score": score, "box_xyxy": [x0, y0, x1, y1], "bbox_xyxy": rle_bbox_xyxy(rle), "area_px": int(mask.sum()), "rle": rle})
    answer = {"text_method": "concept", "instances": instances}
    page.evaluate(
        """async (answer) => {
            const { showTextAnswer } = await import('./find.js');
            showTextAnswer(answer, { text: 'box', model: 'sam3-test', scoreThresh: 0.5 });
        }""",
        answer,
    )
    rows = _found_rows(page, 3)
    assert rows.locator(".conf").all_inner_texts() == ["0.91", "0.74", "0.55"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui_find.png"))
    assert page.get_attribute("#text-method", "data-method") == "concept"
    assert "3 instance(s)" in page.inner_text("#text-method") and "sam3-test" in page.inner_text("#text-method")
    np.testing.assert_array_equal(_overlay(page), _union(i["rle"] for i in instances))

    rows.nth(1).locator("button.reject").click()
    rows = _found_rows(page, 2)
    assert rows.locator(".conf").all_inner_texts() == ["0.91", "0.55"]
    np.testing.assert_array_equal(_overlay(page), _union([instances[0]["rle"], instances[2]["rle"]]))

    rows.nth(1).locator("input").fill("crate")
    with page.expect_response(_is_post("/v1/examples")) as info:
        rows.nth(1).locator("input").press("Enter")
    assert info.value.ok, info.value.text()
    sent = info.value.request.post_data_json
    assert sent["mask_rle"] == instances[2]["rle"] and sent["label"] == "crate" and sent["model_id"] == MODEL_ID
    page.wait_for_function("document.querySelector('#found li[data-index=\"1\"]').dataset.state === 'accepted'")
    _wait_idle(page)
    _no_error(page)
    assert page.inner_text("#annotation-count") == "1" and page.text_content("#found-count") == "1 open of 2"
    np.testing.assert_array_equal(_overlay(page), decode_rle(instances[0]["rle"]))

    # The controls follow the capabilities: a concept model has a threshold; a points-only one no text box.
    def with_capabilities(caps: dict) -> None:
        page.evaluate(
            """async (caps) => {
                const { ui } = await import('./state.js');
                const { render } = await import('./overlay.js');
                ui.model = { ...ui.model, capabilities: { ...ui.model.capabilities, ...caps } };
                render();
            }""",
            caps,
        )

    with_capabilities({"concept_prompts": True, "automatic_masks": False})
    assert page.is_enabled("#text") and page.is_enabled("#find") and page.is_enabled("#score-thresh")
    assert page.is_disabled("#predict")
    with_capabilities({"concept_prompts": False, "multimask": False})
    assert page.is_disabled("#text") and page.is_disabled("#find") and page.is_disabled("#multimask")
    label = page.evaluate("async () => (await import('./models.js')).modelLabel({model_id: 'm', family: 'sam3', weights: 'random'})")
    assert label == "m (sam3) ⚠ random weights"
