"""/v1/video/sessions over HTTP: the correction sequence against sam2's SAM2VideoPredictor, cancellation
(DELETE and the client going away), the session errors, and sessions spread over 2 VideoSegmenter
replicas with their bound and TTL.

Each tracked frame costs one SAM 2 encoding at 1024 px (seconds on 2 cores), so clips are short: 3
bedroom frames for parity, 6 for cancellation, 2 per session elsewhere. sam2's predictor is built with
``add_all_frames_to_correct_as_cond`` on, as the service builds its own, so that a correction click is a
conditioning frame on both sides.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import httpx
import numpy as np
import pytest

from models.masks import decode_rle
from tests.conftest import BEDROOM_BOX, MODEL_ID, bedroom_frames
from tests.integration.conftest import QUICK_DRAIN, VIDEO_SIZE_OVERRIDE
from tests.video_sequence import CORRECT_AS_COND, LAST, assert_correction_kept, assert_same, run_reference, sequence

PARITY_FRAMES, PARITY_LATER = 3, 2
PARITY_STEPS = sequence(PARITY_LATER)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _frames(n: int) -> list[dict]:
    return [{"base64": _b64(p.read_bytes())} for p in bedroom_frames(n)]


# 16 frames (VIDEO_MAX_FRAMES): at the tests' 256 px a frame tracks in tens of ms, so a cancel must land
# well before the end of the clip to pass, with room for the HTTP round trip of the DELETE.
TINY = _frames(16)
BOX = {"frame_index": 0, "obj_id": 1, "box_xyxy": BEDROOM_BOX}


def _open(client, frames, prefix: str = "") -> dict:
    r = client.post(f"{prefix}/v1/video/sessions", json={"frames": frames})
    assert r.status_code == 200, r.text
    return r.json()


def _masks(objects: list[dict]) -> np.ndarray:
    return np.stack([decode_rle(o["rle"]) for o in objects])


def _stream(client, sid: str, body: dict, prefix: str = "") -> list[dict]:
    with client.stream("POST", f"{prefix}/v1/video/sessions/{sid}/propagate", json=body) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(line) for line in r.iter_lines() if line]


def _wait_idle(client, sid: str) -> dict:
    """The session's fields once no propagation runs (a wait, bounded, not a timing check)."""
    for _ in range(600):
        info = client.get(f"/v1/video/sessions/{sid}").json()
        if not info["propagating"]:
            return info
        time.sleep(0.5)
    raise AssertionError("the propagation never ended")


# ---------------------------------------------------------------- parity
@pytest.fixture(scope="module")
def reference_steps(tiny_checkpoint, tmp_path_factory):
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from models.registry import get_model_spec

    folder = tmp_path_factory.mktemp("bedroom_sessions_http")
    for p in bedroom_frames(PARITY_FRAMES):
        (folder / p.name).symlink_to(p)
    torch.set_num_threads(2)
    config = get_model_spec(MODEL_ID, "sam2").config
    predictor = build_sam2_video_predictor(config, ckpt_path=str(tiny_checkpoint), device="cpu", hydra_overrides_extra=[CORRECT_AS_COND, VIDEO_SIZE_OVERRIDE])
    superseded: dict = {}
    return run_reference(predictor, predictor.init_state(video_path=str(folder)), PARITY_STEPS, superseded), superseded


def test_correction_sequence_over_http_equals_sam2(client, reference_steps):
    """Bit for bit with sam2; the correction survives the next propagation; the last propagation (both
    ways from frame 1, where the one object left has no prompt) streams frame 1 once, with the result sam2
    keeps (its backward pass's), not the forward pass's."""
    reference_steps, superseded = reference_steps
    opened = _open(client, [{"base64": _b64(p.read_bytes())} for p in bedroom_frames(PARITY_FRAMES)])
    sid = opened["session_id"]
    assert (opened["num_frames"], opened["width"], opened["height"], opened["obj_ids"]) == (PARITY_FRAMES, 960, 540, [])
    assert opened["expires_at"].endswith("Z") and len(sid) == 32
    ours = []
    for kind, kw in PARITY_STEPS:
        if kind == "prompt":
            body = {k: v for k, v in kw.items() if k not in ("points", "point_labels")}
            if "points" in kw:
                body["points"] = [[*xy, label] for xy, label in zip(kw["points"], kw["point_labels"])]
            r = client.post(f"/v1/video/sessions/{sid}/prompts", json=body)
            assert r.status_code == 200, r.text
            a = r.json()
            assert a["obj_ids"] == [o["obj_id"] for o in a["objects"]] and a["mask_format"] == "rle"
            ours.append({a["frame_index"]: (a["obj_ids"], _masks(a["objects"]))})
        elif kind == "propagate":
            lines = _stream(client, sid, kw)
            assert lines[0]["type"] == "start" and lines[-1]["type"] == "end", lines[-1]
            frames = [f for f in lines if f["type"] == "frame"]
            assert lines[-1]["frames"] == len(frames)
            ours.append({f["frame_index"]: ([o["obj_id"] for o in f["objects"]], _masks(f["objects"])) for f in frames})
        else:
            r = client.delete(f"/v1/video/sessions/{sid}/objects/{kw['obj_id']}")
            assert r.status_code == 200, r.text
            ours.append({f["frame_index"]: (r.json()["obj_ids"], _masks(f["objects"])) for f in r.json()["frames"]})
    assert_same(ours, reference_steps, PARITY_STEPS)
    assert_correction_kept(ours, PARITY_STEPS)
    assert list(ours[LAST]) == [2, 1, 0]
    assert not np.array_equal(superseded[LAST][1], ours[LAST][1][1]), "frame 1's two results agree: a vacuous check"
    assert client.delete(f"/v1/video/sessions/{sid}").json() == {"session_id": sid, "closed": True}


# ---------------------------------------------------------------- cancellation
@pytest.fixture()
def tiny_session(client):
    sid = _open(client, TINY)["session_id"]
    r = client.post(f"/v1/video/sessions/{sid}/prompts", json=BOX)
    assert r.status_code == 200, r.text
    yield sid
    client.delete(f"/v1/video/sessions/{sid}")


def test_delete_cancels_a_running_propagation(client, tiny_session):
    sid = tiny_session
    with client.stream("POST", f"/v1/video/sessions/{sid}/propagate", json={}) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["type"] == "start"
        assert json.loads(next(lines))["frame_index"] == 0
        assert client.delete(f"/v1/video/sessions/{sid}/propagation").json() == {"session_id": sid, "cancelled": True}
        rest = [json.loads(line) for line in lines if line]
    assert rest[-1]["type"] == "end"
    # the frame read, the frames tracked during the DELETE's round trip, and no more: not all 16
    assert rest[-1]["frames"] <= 8 < len(TINY)
    assert client.delete(f"/v1/video/sessions/{sid}/propagation").json()["cancelled"] is False


def test_client_going_away_stops_the_propagation(client, app_url, tiny_session):
    sid = tiny_session
    before = client.get(f"/v1/video/sessions/{sid}").json()["frames_tracked"]
    with httpx.Client(base_url=app_url, timeout=300) as other:
        with other.stream("POST", f"/v1/video/sessions/{sid}/propagate", json={}) as r:
            lines = r.iter_lines()
            assert json.loads(next(lines))["type"] == "start"
            assert json.loads(next(lines))["type"] == "frame"
        # the connection is closed here, before the other 15 frames
    info = _wait_idle(client, sid)
    assert info["frames_tracked"] - before <= 8 < len(TINY)
    # the session is free and consistent: a new propagation runs to the end
    lines = _stream(client, sid, {"max_frames": 2})
    assert [x["type"] for x in lines] == ["start", "frame", "frame", "end"]


# ---------------------------------------------------------------- errors
def test_session_errors(client):
    sid = _open(client, TINY[:2])["session_id"]
    url = f"/v1/video/sessions/{sid}"
    bad = [
        ({"frame_index": 2, "obj_id": 1, "box_xyxy": [1, 1, 9, 9]}, 422, "out_of_clip", "frame_index"),
        ({"frame_index": 0, "obj_id": 1, "points": [[970, 5, 1]]}, 422, "out_of_image", "points"),
        ({**BOX, "clear_old_points": False}, 422, "invalid_request", "clear_old_points"),
        ({"frame_index": 0, "obj_id": 1, "mask_rle": {"size": [10, 10], "counts": "0"}}, 422, "invalid_request", "mask_rle"),
        ({"frame_index": 0, "obj_id": 1}, 422, "invalid_request", None),
        ({**BOX, "clear_old_point": True}, 422, "invalid_request", "clear_old_point"),
    ]
    for body, status, code, field in bad:
        r = client.post(f"{url}/prompts", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["code"] == code and r.json()["error"]["field"] == field, (body, r.json())
    assert client.get(url).json()["obj_ids"] == []  # refused prompts added no object
    r = client.post(f"{url}/propagate", json={})
    assert r.status_code == 422 and "no object" in r.json()["error"]["message"]
    r = client.delete(f"{url}/objects/5")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_object"
    r = client.post(f"{url}/prompts", json=BOX)
    assert r.status_code == 200 and r.json()["obj_ids"] == [1]
    assert client.post(f"{url}/reset").json()["obj_ids"] == []

    assert client.delete(url).status_code == 200
    for method, path in [("GET", ""), ("POST", "/prompts"), ("POST", "/propagate"), ("DELETE", ""), ("POST", "/reset")]:
        r = client.request(method, url + path, json=BOX if path == "/prompts" else ({} if method == "POST" else None))
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_session", (method, path, r.text)
    r = client.get(f"/v1/video/sessions/{uuid.uuid4().hex}")  # an id no replica ever held
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_lost"
    r = client.get("/v1/video/sessions/not-an-id")
    assert r.status_code == 422 and r.json()["error"]["field"] == "session_id"
    r = client.post("/v1/video/sessions", json={"frames": []})
    assert r.status_code == 422 and r.json()["error"]["field"] == "frames"


# ---------------------------------------------------------------- two replicas, bound, TTL
PAIR = "/pair"
MAX_SESSIONS = 3  # per replica


def _deploy_pair(app_args: dict, replicas: int, ttl_s: float) -> None:
    """A second app at /pair: an Ingress over the main app's stages and its own VideoSegmenter with
    ``replicas`` replicas (1 torch thread each), ``MAX_SESSIONS`` sessions each and ``ttl_s``."""
    from ray import serve

    from deployments.video import VideoSegmenter
    from serve_app.app import Ingress
    from serve_app.config import AppArgs
    from serve_app.preflight import preflight

    args = {**app_args, "video": {**app_args["video"], "max_sessions": MAX_SESSIONS, "session_ttl_s": ttl_s, "session_retry_after_s": 7}}
    cfg = AppArgs.model_validate(args)
    weights = preflight(cfg).model.as_dict()
    sessions = {"max_sessions": MAX_SESSIONS, "max_bytes": cfg.video.max_session_bytes, "ttl_s": ttl_s, "retry_after_s": 7}
    video = VideoSegmenter.options(num_replicas=replicas, ray_actor_options={"num_cpus": 0}, **QUICK_DRAIN).bind(MODEL_ID, weights, "cpu", 1, None, 1, sessions, image_size=cfg.video.image_size)
    stage = {n: serve.get_deployment_handle(n, app_name="samgraph") for n in ("ImageEncoder", "MaskDecoder", "Fader", "Embedder", "Retriever")}
    models = [{MODEL_ID: stage.pop(n)} for n in ("ImageEncoder", "MaskDecoder")]
    ingress = Ingress.options(num_replicas=1, ray_actor_options={"num_cpus": 0}, **QUICK_DRAIN).bind(*models, *stage.values(), cfg.model_dump(), video=video)
    serve.run(ingress, name="sessions_pair", route_prefix=PAIR)


@pytest.fixture(scope="module")
def pair(app_url, app_args):
    from ray import serve

    _deploy_pair(app_args, replicas=2, ttl_s=600)
    try:
        with httpx.Client(base_url=app_url, timeout=300) as c:
            yield c
    finally:
        serve.delete("sessions_pair")


def test_sessions_spread_over_two_replicas_each_call_finds_its_session_and_the_bound_holds(pair, app_args):
    """Open sessions until both replicas hold some and one refused a new one (3 each at most, so by the
    7th open at the latest); then every session answers from the replica that opened it."""
    held: dict[str, str] = {}
    refused = None
    for _ in range(40):
        r = pair.post(f"{PAIR}/v1/video/sessions", json={"frames": TINY[:2]})
        if r.status_code == 503:
            refused = r
        else:
            assert r.status_code == 200, r.text
            held[r.json()["session_id"]] = r.json()["replica"]
        if refused is not None and len(set(held.values())) == 2:
            break
    assert len(set(held.values())) == 2, held
    assert refused.json()["error"]["code"] == "sessions_full" and refused.headers["retry-after"] == "7"
    assert all(n <= MAX_SESSIONS for n in (list(held.values()).count(r) for r in set(held.values())))
    for sid, replica in held.items():
        info = pair.get(f"{PAIR}/v1/video/sessions/{sid}").json()
        assert (info["session_id"], info["replica"]) == (sid, replica)
    for replica in set(held.values()):  # a prompt on one session of each replica
        sid = next(s for s, r in held.items() if r == replica)
        r = pair.post(f"{PAIR}/v1/video/sessions/{sid}/prompts", json=BOX)
        assert r.status_code == 200 and r.json()["objects"][0]["area_px"] > 0, r.text
    # one replica dies: its sessions are lost (404 session_lost, never another replica's answer); the
    # other replica's sessions are untouched
    import ray

    dead = sorted(set(held.values()))[0]
    ray.kill(ray.get_actor(f"SERVE_REPLICA::sessions_pair#VideoSegmenter#{dead}", namespace="serve"), no_restart=True)
    for sid, replica in held.items():
        r = pair.get(f"{PAIR}/v1/video/sessions/{sid}")
        if replica == dead:
            assert r.status_code == 404 and r.json()["error"]["code"] == "session_lost", r.text
        else:
            assert r.status_code == 200 and r.json()["replica"] == replica, r.text
            assert pair.delete(f"{PAIR}/v1/video/sessions/{sid}").status_code == 200
    # closed sessions free their places: a new one opens
    assert pair.post(f"{PAIR}/v1/video/sessions", json={"frames": TINY[:2]}).status_code == 200

    # TTL: redeployed with a 2 s TTL (one replica), an idle session expires
    _deploy_pair(app_args, replicas=1, ttl_s=2)
    from tests.polling import wait_until

    sid = _open(pair, TINY[:2], PAIR)["session_id"]
    # /v1/stats sweeps the replica's sessions (a GET of the session would restart its idle time)
    wait_until(lambda: pair.get(f"{PAIR}/v1/stats").json()["video"]["sessions"]["expired"] >= 1, 60, "the idle session expired")
    r = pair.get(f"{PAIR}/v1/video/sessions/{sid}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_session", r.text


def test_cli_session_flow(app_url, tmp_path, capsys):
    """`samgraph video-session` open, prompt, propagate, info, a correction click on a tracked frame and a
    propagation both ways that keeps it, close, on a folder of frames."""
    from serve_app.cli.main import main

    folder = tmp_path / "clip"
    folder.mkdir()
    for i, f in enumerate(TINY[:2]):
        (folder / f"{i:05d}.jpg").write_bytes(base64.b64decode(f["base64"]))
    api = ["--api", app_url]

    def run(*argv) -> dict:
        assert main(["video-session", *argv[:1], *api, *argv[1:]]) == 0
        return json.loads(capsys.readouterr().out)

    sid = run("open", "--frames", str(folder))["session_id"]
    answer = run("prompt", sid, "--frame-index", "0", "--obj-id", "3", "--box", ",".join(map(str, BEDROOM_BOX)))
    assert answer["obj_ids"] == [3] and answer["objects"][0]["area_px"] > 0
    out = tmp_path / "masks.json"
    summary = run("propagate", sid, "--out", str(out))
    assert summary["frames"] == 2 and [f["frame_index"] for f in json.loads(out.read_text())["frames"]] == [0, 1]
    assert run("info", sid)["frames_tracked"] == 2
    first = json.loads(out.read_text())["frames"][1]["objects"][0]["rle"]
    corrected = run("prompt", sid, "--frame-index", "1", "--obj-id", "3", "--point", "350,200,bg", "--keep-points")["objects"][0]["rle"]
    assert not np.array_equal(decode_rle(corrected), decode_rle(first))
    run("propagate", sid, "--start-frame", "1", "--direction", "both", "--out", str(out))
    again = json.loads(out.read_text())["frames"]
    assert [f["frame_index"] for f in again] == [0, 1] and np.array_equal(decode_rle(again[1]["objects"][0]["rle"]), decode_rle(corrected))
    assert run("close", sid)["closed"] is True
    assert main(["video-session", "info", *api, sid]) == 1
    assert "unknown_session" in capsys.readouterr().err
