"""Click-to-overlay latency of the annotation page (/ui) in headless Chromium, against the same request
from Python in the same run.

Service: `serve run configs/serve.yaml` on 127.0.0.1 with seeded random weights (the real SAM 2.1 compute).
Browser: Debian's Chromium (/usr/bin/chromium) driven by Playwright at 1280x720; the truck photo is
opened once (one encode), then every click is a decoder call on the cached image.

Per round, two prompts on one object:
  click  - Esc (clear), then a left click: one foreground point, 3 candidates, return_logits;
  refine - a right click: the object's two points plus the chosen candidate's low_res_logits as mask_input.

Measured:
  browser  - in the page: from the mouseup event to the requestAnimationFrame callback of the frame that
             shows the new overlay (fetch, JSON parse, RLE decode, overlay paint); the page also reports
             its fetch and paint parts;
  baseline - the very request body the page sent, sent again right after from Python httpx (JSON in,
             JSON parsed out): the API alone, without a browser.

Reports p50/p95/p99 and the ratios browser/baseline, writes benchmarks/results/ui_click.json; with
--screenshot also writes the README screenshot (a label accepted, Predict run, then a click).

    python -m benchmarks.ui_click_latency [--config configs/serve.yaml] [--rounds 10] [--screenshot docs/ui.jpg]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import REPO, SHARED_DATA, serve_config, summarize, write_result

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 720}
# Foreground clicks on the truck and a background click beside each (pixels of truck.jpg, 1800x1200).
CLICKS = [(500, 375), (1125, 625), (300, 600), (900, 450), (1500, 550), (700, 700), (1300, 350), (400, 450), (1000, 750), (1600, 700)]
BG_OFFSET = (0, 380)
SCREENSHOT_AMG = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def _screen(page, x: float, y: float) -> tuple[float, float]:
    box = page.locator("#prompts").bounding_box()
    return box["x"] + x * box["width"] / 1800, box["y"] + y * box["height"] / 1200


def _prompt(page, x: float, y: float, button: str) -> tuple[dict, dict]:
    """Click at image pixel (x, y); wait until the page has drawn the answer.

    Returns:
        (the page's timings: click_ms, fetch_ms, render_ms, server_ms; the request body it sent).
    """
    shown = int(page.get_attribute("#status", "data-masks-shown") or 0)
    with page.expect_request(lambda r: r.url.endswith("/v1/segment") and r.method == "POST") as req:
        page.mouse.click(*_screen(page, x, y), button=button)
    page.wait_for_function(f"Number(document.getElementById('status').dataset.masksShown || 0) > {shown}")
    d = page.evaluate("({...document.getElementById('status').dataset})")
    if not page.locator("#error").is_hidden():
        raise RuntimeError(page.inner_text("#error"))
    return {k: float(d[k]) for k in ("clickMs", "fetchMs", "renderMs", "serverMs")}, req.value.post_data_json


def _replay(http, body: dict) -> float:
    t = time.perf_counter()
    r = http.post("/v1/segment", json=body)
    r.raise_for_status()
    r.json()
    return time.perf_counter() - t


def measure(url: str, rounds: int, warmup: int, screenshot: Path | None) -> dict:
    import httpx
    from playwright.sync_api import sync_playwright

    truck = SHARED_DATA / "images" / "truck.jpg"
    samples = {k: {"browser": [], "baseline": [], "fetch": [], "render": [], "server": []} for k in ("click", "refine")}
    with sync_playwright() as p, httpx.Client(base_url=url, timeout=300) as http:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
        page.set_default_timeout(120_000)
        page.goto(f"{url}/ui")
        page.set_input_files("#file", str(truck))
        page.wait_for_selector("#stage:not([hidden])")
        page.wait_for_function("document.body.dataset.busy === '0'")
        for i in range(warmup + rounds):
            x, y = CLICKS[i % len(CLICKS)]
            page.keyboard.press("Escape")
            for kind, (px, py), button in (("click", (x, y), "left"), ("refine", (x + BG_OFFSET[0], (y + BG_OFFSET[1]) % 1200), "right")):
                timing, body = _prompt(page, px, py, button)
                base = _replay(http, body)
                if i >= warmup:
                    s = samples[kind]
                    s["browser"].append(timing["clickMs"] / 1e3)
                    s["fetch"].append(timing["fetchMs"] / 1e3)
                    s["render"].append(timing["renderMs"] / 1e3)
                    s["server"].append(timing["serverMs"] / 1e3)
                    s["baseline"].append(base)
        res = {"chromium": browser.version, **{kind: {k: summarize(v) for k, v in s.items()} for kind, s in samples.items()}}
        if screenshot is not None:
            readme_screenshot(page, screenshot)
        browser.close()
    return res


def readme_screenshot(page, path: Path) -> None:
    """The page with one accepted label, Predict's suggestions and a fresh click, as a JPEG."""
    page.keyboard.press("Escape")
    _prompt(page, 900, 450, "left")
    page.keyboard.press("l")
    page.keyboard.type("truck")
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('annotation-count').textContent === '1'")
    with page.expect_response(lambda r: r.url.endswith("/v1/predict"), timeout=600_000) as info:
        page.keyboard.press("p")
    if not info.value.ok:
        raise RuntimeError(info.value.text())
    page.wait_for_function("document.body.dataset.busy === '0'")
    _prompt(page, 1500, 550, "left")
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), type="jpeg", quality=80)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "serve.yaml"))
    p.add_argument("--rounds", type=int, default=10, help="measured rounds (a click and a refinement each)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--screenshot", type=Path, default=None, help="also write the README screenshot here (runs Predict: ~1 min on CPU)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="samgraph-ui-bench-") as tmp:
        # Automatic masks for the screenshot's Predict: an 8x8 grid with the filters off, as random
        # weights leave nothing above the shipped thresholds. Clicks do not use these settings.
        config = yaml.safe_load(Path(args.config).read_text())
        config["applications"][0]["args"]["amg"].update(SCREENSHOT_AMG)
        config_path = Path(tmp) / "serve.yaml"
        config_path.write_text(yaml.safe_dump(config))
        env = {"SAMGRAPH_WEIGHTS": "random", "SAMGRAPH_SEED": "0", "SAMGRAPH_DATA_DIR": str(Path(tmp) / "data")}
        with serve_config(config_path, env) as url:
            res = measure(url, args.rounds, args.warmup, args.screenshot)

    chromium = res.pop("chromium")
    ratios = {f"{k}_p50_browser_over_baseline": res[k]["browser"]["p50_ms"] / res[k]["baseline"]["p50_ms"] for k in res}
    ratios.update({f"{k}_p50_browser_minus_baseline_ms": res[k]["browser"]["p50_ms"] - res[k]["baseline"]["p50_ms"] for k in res})
    print(f"{'workload':<44} {'n':>4} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}")
    names = {
        "browser": "click to overlay, in the browser",
        "baseline": "same request from httpx (baseline)",
        "fetch": "  browser: fetch + JSON parse",
        "render": "  browser: RLE decode + overlay paint",
        "server": "  server timing_ms.total",
    }
    for kind in ("click", "refine"):
        for k, name in names.items():
            r = res[kind][k]
            print(f"{kind + ': ' + name:<44} {r['n']:>4} {r['p50_ms']:>9.1f} {r['p95_ms']:>9.1f} {r['p99_ms']:>9.1f}")
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")
    path = write_result(
        "ui_click",
        {"config": str(Path(args.config).relative_to(REPO)), "amg_for_the_screenshot": SCREENSHOT_AMG, "browser": f"Chromium {chromium} (headless)", "viewport": VIEWPORT, "image": "truck.jpg (1800x1200)", "results": res, "ratios": ratios},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
