"""Label Studio's own labeling page, in Debian's Chromium (headless) driven by Playwright, with samgraph as the
project's interactive ML backend: a click with the smart keypoint tool brings samgraph's mask into the page.

Label Studio (from PyPI, unmodified) is started and set up by tests/integration/test_labelstudio.py's
fixtures (imported here, not copied): a project of truck.jpg and dog.jpg with BrushLabels, smart
KeyPointLabels and RectangleLabels, samgraph connected with *Interactive preannotations* on. Without Label
Studio this module skips (``SAMGRAPH_REQUIRE_LABEL_STUDIO=1`` makes that a failure); without Chromium or
Playwright too (``SAMGRAPH_REQUIRE_BROWSER=1``).

Label Studio's frontend ships in its wheel (``web/dist``), so the page needs no network: the page asks for
Google Tag Manager, labelstud.io's tracker and Sentry (its CDN and ingest host), and the test refuses every
request that does not go to Label Studio's loopback address; the page works without them. A screenshot
after the click is written to ``artifacts/labelstudio_click.png`` (not committed; docs/label-studio-mask.jpg
is one of them).
"""

from __future__ import annotations

import base64
import io
import time
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from models.masks import decode_rle
from tests.conftest import REPO
from tests.integration.test_labelstudio import (  # noqa: F401  (fixtures: label_studio, project)
    IMAGES,
    PASSWORD,
    USER,
    _iou,
    _ok,
    label_studio,
    project,
)
from tests.polling import wait_until

VIEWPORT = {"width": 1280, "height": 800}
ARTIFACTS = REPO / "artifacts"
W, H = 1800, 1200  # truck.jpg
CLICK = (900, 700)  # on the truck, pixels of truck.jpg


def _image_pixels(page, box: dict) -> np.ndarray:
    """(h, w, 3) uint8: what the page shows over the image's box now."""
    with Image.open(io.BytesIO(page.screenshot(clip=box))) as im:
        return np.asarray(im.convert("RGB"))


def _settled_box(locator) -> dict:
    """The element's bounding box (CSS pixels of the page) once two reads 0.2 s apart agree: the page lays
    the image out again as its toolbars and label rows appear."""
    last: list[dict | None] = [None]

    def same():
        box = locator.bounding_box()
        settled = box is not None and box["width"] > 0 and box == last[0]
        last[0] = box
        return box if settled else None

    return wait_until(same, 10, "the image's layout settles", interval_s=0.2)


def test_a_click_with_the_smart_keypoint_tool_shows_samgraphs_mask_in_label_studios_page(
    label_studio,  # noqa: F811  (the imported fixtures)
    project,  # noqa: F811
    client,
    browser,
):
    t0 = time.monotonic()
    task, ml_id = project["tasks"]["truck.jpg"], project["ml"]["id"]
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(60_000)
    refused: set[str] = set()

    def loopback_only(route):
        refused.add(urlsplit(route.request.url).netloc)
        route.abort()

    page.route(lambda url: not url.startswith(label_studio.url), loopback_only)
    try:
        # Log in as the test user (the account label-studio's CLI made), open the truck's task.
        page.goto(f"{label_studio.url}/user/login")
        page.fill("input[name=email]", USER)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{label_studio.url}/")
        page.goto(f"{label_studio.url}/projects/{project['id']}/data?task={task['id']}")
        page.wait_for_function(
            "[...document.images].some(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth === 1800)"
        )
        image = page.locator("img[src^='blob:']")

        # Auto-Annotation on (the toggle is there because the project has an interactive backend), its
        # suggestions accepted at once; the keypoint control's "truck" label and the smart keypoint tool.
        page.get_by_test_id("bottombar-auto-annotation-toggle").click()
        page.get_by_test_id("bottombar-auto-accept-toggle").click()
        page.locator(".lsf-label", has_text="truck").nth(1).click()  # 1: BrushLabels, 3: KeyPointLabels
        smart_keypoint = page.locator("button.lsf-tool_smart[aria-label=key-point-tool]")
        smart_keypoint.dispatch_event("click")  # it sits in the Auto-Detect tool's fly-out
        page.wait_for_function("el => el.classList.contains('lsf-tool_active')", arg=smart_keypoint.element_handle())
        box = _settled_box(image)
        assert abs(box["width"] / box["height"] - W / H) < 0.01, box
        before = _image_pixels(page, box)

        # The click: Label Studio asks samgraph through its own server and puts the answer into the page.
        t_click = time.monotonic()
        with page.expect_response(lambda r: r.url.endswith(f"/api/ml/{ml_id}/interactive-annotating")) as info:
            page.mouse.click(box["x"] + CLICK[0] / W * box["width"], box["y"] + CLICK[1] / H * box["height"])
        assert info.value.ok, info.value.text()
        (keypoint,) = info.value.request.post_data_json["context"]["result"]
        assert keypoint["type"] == "keypointlabels" and keypoint["value"]["keypointlabels"] == ["truck"]
        page.wait_for_selector(".lsf-outliner-item")
        click_s = time.monotonic() - t_click
        assert page.locator(".lsf-outliner-item").count() == 1
        assert "truck" in page.inner_text(".lsf-outliner-item")

        # The region the page holds is samgraph's mask of the point the page sent: /v1/segment's for it.
        from serve_app.labelstudio import brush_mask

        result = page.evaluate("window.dataManager.lsf.currentAnnotation.serializeAnnotation()")
        (region,) = [r for r in result if r["type"] == "brushlabels"]
        assert (region["from_name"], region["to_name"], region["value"]["brushlabels"]) == ("tag", "image", ["truck"])
        in_page = brush_mask(region["value"]["rle"], W, H)
        x_px, y_px = keypoint["value"]["x"] / 100 * W, keypoint["value"]["y"] / 100 * H
        assert abs(x_px - CLICK[0]) < 4 and abs(y_px - CLICK[1]) < 4, (x_px, y_px, box)
        photo = base64.b64encode((IMAGES / "truck.jpg").read_bytes()).decode()
        body = {"image": {"base64": photo}, "prompts": [{"points": [[x_px, y_px, 1]]}], "max_masks": 1}
        direct = _ok(client.post("/v1/segment", json=body))
        assert direct["encode_cached"] is True  # the click encoded the photo
        expected = decode_rle(direct["results"][0]["masks"][0]["rle"])
        assert expected.any() and _iou(in_page, expected) >= 0.999

        # ... it is drawn: the image's pixels change where the page paints the region (Konva draws on the
        # next animation frames).
        def changed() -> float:
            after = _image_pixels(page, box)
            return float((np.abs(after.astype(int) - before.astype(int)).max(axis=2) > 30).mean())

        wait_until(lambda: changed() > 0.2 * in_page.mean(), 10, "the region drawn over the image", interval_s=0.2)

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "labelstudio_click.png"
        page.screenshot(path=str(shot))

        # Submitted, the annotation Label Studio stores holds that mask.
        page.get_by_label("Submit current annotation").click()

        def stored():
            annotations = _ok(label_studio.api.get(f"/api/tasks/{task['id']}/annotations/"))
            return annotations[0]["result"] if annotations else None

        (saved,) = [r for r in wait_until(stored, 30, "the submitted annotation") if r["type"] == "brushlabels"]
        assert saved["value"]["brushlabels"] == ["truck"]
        assert _iou(brush_mask(saved["value"]["rle"], W, H), expected) >= 0.999
        print(
            f"\nLabel Studio page: click to region {click_s:.2f} s; test {time.monotonic() - t0:.1f} s beyond Label "
            f"Studio's start; refused (off loopback): {sorted(refused)}; screenshot {shot}"
        )
    finally:
        page.close()
