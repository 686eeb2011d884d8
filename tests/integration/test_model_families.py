"""Three model families served at once, each answering through the running service what its upstream
reference answers in process on the same weights file.

A side app (``families``) serves SAM 2.1 tiny (the package app's stages, the default), MobileSAM and the
tiny SAM 3 architecture, each with its own ``ImageEncoder`` and ``MaskDecoder`` and image cache, from
weights files written as the released ones are (``tests/family_weights.py``). References:
``mobile_sam.SamPredictor`` for MobileSAM clicks; transformers' ``Sam3Model`` (concept prompts) and
``Sam3TrackerModel`` (clicks), with the references of ``tests/unit/test_sam3.py``.

MobileSAM's encoder runs on ONNX Runtime and its decoder on OpenVINO (``runtime: onnxruntime`` /
``openvino``): its replicas export the model on first start into a cache dir of their own (one exports, the
other waits for it) and load the graphs, so its answers here are the exported graphs' against torch's
(``SamPredictor``) on the same checkpoint.
"""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from models.masks import decode_rle
from tests.conftest import MODEL_ID, SEED, TRUCK_BOX, mask_iou
from tests.family_weights import write_mobile_sam_checkpoint, write_sam3_tiny_checkpoint
from tests.integration.conftest import QUICK_DRAIN, app_stages

NAME = "families"
MOBILE, SAM3 = "mobile_sam", "sam3-tiny"
CLICK = [900, 560]  # on the truck
IOU_MIN, SCORE_TOL = 0.999, 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("family_weights")
    return {
        MOBILE: str(write_mobile_sam_checkpoint(directory, SEED)),
        SAM3: str(write_sam3_tiny_checkpoint(directory, SEED)),
    }


#: The runtime of each stage of the side app's own models: MobileSAM's encoder on ONNX Runtime, its decoder on
#: OpenVINO (fast to compile for MobileSAM's graphs); SAM 3 runs torch only.
RUNTIME = {MOBILE: {"encoder": "onnxruntime", "decoder": "openvino"}, SAM3: {"encoder": "torch", "decoder": "torch"}}


def _family_args(app_args: dict, checkpoints: dict) -> dict:
    """The package app's arguments with ``models``: SAM 2 (the default), MobileSAM (on ONNX Runtime and
    OpenVINO), SAM 3 tiny."""
    one_model = ("model_id", "weights", "checkpoint", "seed", "encoder", "decoder", "cache")
    args = {k: v for k, v in app_args.items() if k not in one_model}
    sam2 = {k: app_args[k] for k in ("model_id", "weights", "checkpoint")}
    others = []
    for m in (MOBILE, SAM3):
        stages = {s: {"device": "cpu", "torch_threads": 1, "runtime": RUNTIME[m][s]} for s in ("encoder", "decoder")}
        others.append({"model_id": m, "weights": "file", "checkpoint": checkpoints[m], **stages})
    return {**args, "models": [sam2, *others]}


@pytest.fixture(scope="module")
def families(app_url, app_args, checkpoints, tmp_path_factory):
    """The side app over the package app's SAM 2 stages, fader, embedder and retriever, with MobileSAM's and
    SAM 3's own stages (one replica each, no CPU share; their cache dir, where MobileSAM's export goes, a
    temporary one); deleted afterwards."""
    from ray import serve

    from deployments.decoder import MaskDecoder
    from deployments.encoder import ImageEncoder
    from serve_app.app import Ingress, stage_names
    from serve_app.config import AppArgs

    cfg = AppArgs.model_validate(_family_args(app_args, checkpoints))
    stages = app_stages()
    encoders, decoders = {MODEL_ID: stages["encoder"]}, {MODEL_ID: stages["decoder"]}
    env = {"env_vars": {"SAMGRAPH_CACHE_DIR": str(tmp_path_factory.mktemp("families_cache"))}}
    no_cpu = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0, "runtime_env": env}, **QUICK_DRAIN}
    for i, m in enumerate(cfg.served_models()[1:], start=1):
        weights = {"kind": "file", "checkpoint": m.checkpoint, "seed": 0}
        enc_name, dec_name = stage_names(i, m.model_id)
        enc, dec = m.encoder.runtime_settings(m.export_dir), m.decoder.runtime_settings(m.export_dir)
        encoders[m.model_id] = ImageEncoder.options(name=enc_name, **no_cpu).bind(m.model_id, weights, "cpu", 1, runtime=enc)
        decoders[m.model_id] = MaskDecoder.options(name=dec_name, **no_cpu).bind(
            m.model_id, weights, "cpu", 1, None, encoders[m.model_id], runtime=dec
        )
    ingress = Ingress.options(**no_cpu).bind(
        encoders, decoders, stages["fader"], stages["embedder"], stages["retriever"], cfg.model_dump(), video=stages["video"]
    )
    serve.run(ingress, name=NAME, route_prefix=f"/{NAME}")
    try:
        with httpx.Client(base_url=f"{app_url}/{NAME}", timeout=300) as c:
            yield c
    finally:
        serve.delete(NAME)


@pytest.fixture(scope="module")
def truck_b64(truck_path) -> str:
    return base64.b64encode(truck_path.read_bytes()).decode()


def _segment(client, body: dict) -> dict:
    r = client.post("/v1/segment", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_models_and_readiness_list_every_family(families):
    body = families.get("/v1/models").json()
    assert body["default"] == MODEL_ID
    models = {m["model_id"]: m for m in body["models"]}
    assert list(models) == [MODEL_ID, MOBILE, SAM3]
    assert {m: v["family"] for m, v in models.items()} == {MODEL_ID: "sam2", MOBILE: "mobile_sam", SAM3: "sam3"}
    assert [m for m, v in models.items() if v["capabilities"]["concept_prompts"]] == [SAM3]
    assert [m for m, v in models.items() if v["capabilities"]["video"]] == [MODEL_ID]
    assert all(v["weights"].startswith("sha256:") for v in models.values())
    from models.registry import family_of, get_model_spec

    for m, v in models.items():  # what one cached image costs, as the replica's cache counts it
        assert v["feature_bytes"] == family_of(m).feature_nbytes(get_model_spec(m)) > 0
    ready = families.get("/readyz")
    assert ready.status_code == 200 and [m["model_id"] for m in ready.json()["models"]] == [MODEL_ID, MOBILE, SAM3]
    assert [m["runtime"] for m in ready.json()["models"]] == [v["runtime"] for v in models.values()]


def test_each_stage_reports_its_runtime_and_the_onnx_export_it_runs(families, checkpoints):
    """MobileSAM's stages run the ONNX export its replicas wrote from the served checkpoint (the manifest's
    weights are the file's SHA-256; both stages the same verified files); the others run torch."""
    from deployments.runtime.cpu import cpu_flags, flags_of_interest
    from deployments.runtime.weights import sha256_file

    models = {m["model_id"]: m for m in families.get("/v1/models").json()["models"]}
    for m, v in models.items():
        for stage in ("encoder", "decoder"):
            r = v["runtime"][stage]
            want = RUNTIME.get(m, {}).get(stage, "torch")
            assert (r["runtime"], r["precision"], r["requested"]) == (want, "fp32", {"runtime": want, "precision": "fp32"})
            assert r["fallbacks"] == [] and r["cpu_flags"] == flags_of_interest(cpu_flags())
            assert v["accel"][stage] == {"precision": "fp32", "compiler": "eager" if want == "torch" else want}
            assert (r["export"] is None) == (want == "torch")
    mobile = models[MOBILE]["runtime"]
    export = mobile["encoder"]["export"]
    assert export == mobile["decoder"]["export"] and export["verified"] and export["opset"] == 17
    assert export["weights"] == f"sha256:{sha256_file(checkpoints[MOBILE])}" == models[MOBILE]["weights"]
    assert set(export["files"]) == {"encoder.onnx", "decoder.onnx"} and all(f["size_bytes"] > 0 for f in export["files"].values())


def test_mobile_sam_clicks_match_sam_predictor(families, truck_b64, truck_rgb, checkpoints):
    """MobileSAM on ONNX Runtime (encoder) and OpenVINO (decoder) through the service answers what torch
    (``SamPredictor``) answers on the same checkpoint: masks IoU >= 0.999, predicted IoU within 1e-4."""
    from mobile_sam import SamPredictor, sam_model_registry

    body = _segment(
        families,
        {"model_id": MOBILE, "image": {"base64": truck_b64}, "multimask_output": False,
         "prompts": [{"box_xyxy": TRUCK_BOX}, {"points": [[*CLICK, 1]]}]},
    )
    assert body["model_id"] == MOBILE
    predictor = SamPredictor(sam_model_registry["vit_t"](checkpoint=checkpoints[MOBILE]))
    predictor.set_image(truck_rgb)
    refs = [
        predictor.predict(box=np.array(TRUCK_BOX), multimask_output=False),
        predictor.predict(point_coords=np.array([CLICK]), point_labels=np.array([1]), multimask_output=False),
    ]
    got = [decode_rle(r["masks"][0]["rle"]) for r in body["results"]]
    for mask, (ref_masks, ref_iou, _), result in zip(got, refs, body["results"]):
        assert mask.any() and not mask.all()
        assert mask_iou(mask, ref_masks[0]) >= IOU_MIN
        assert result["masks"][0]["predicted_iou"] == pytest.approx(float(ref_iou[0]), abs=SCORE_TOL)
    assert not np.array_equal(*got)  # the prompts answer differently


@pytest.fixture(scope="module")
def sam3_refs():
    """transformers' ``Sam3Model`` and ``Sam3TrackerModel`` on the served SAM 3's weights (tests/sam3_references.py)."""
    from models.sam3 import build_sam3_model
    from tests.family_weights import sam3_tiny_state
    from tests.sam3_references import detector_reference, tracker_reference_model

    state = sam3_tiny_state(SEED)
    model = build_sam3_model(SAM3, state)
    return detector_reference(model, state), tracker_reference_model(model, state)


def test_sam3_concepts_match_sam3model_and_clicks_reuse_the_encode(families, truck_b64, truck_rgb, sam3_refs):
    """Text prompts answer every instance Sam3Model finds (non-vacuous: instances above the threshold,
    different between the texts); a click on the same image is the tracker's answer on the same encode."""
    from models.segmenter import ConceptPrompt
    from tests.sam3_references import concept_reference, tracker_reference

    detector, tracker = sam3_refs
    before = families.get("/v1/stats").json()["cache_by_model"][SAM3]["encodes"]
    texts = ["truck", "a wheel"]
    body = _segment(
        families,
        {"model_id": SAM3, "image": {"base64": truck_b64}, "score_thresh": 0.5, "prompts": [{"text": t} for t in texts]},
    )
    assert not body["encode_cached"] and all(r["text_method"] == "concept" for r in body["results"])
    found = [r["instances"] for r in body["results"]]
    assert all(found), "no instance above 0.5: the test would be vacuous"
    assert [i["score"] for i in found[0]] != [i["score"] for i in found[1]]
    for got, text in zip(found, texts):
        want = concept_reference(detector, truck_rgb, ConceptPrompt(text=text, score_thresh=0.5))
        assert len(got) == len(want["scores"])
        for inst, mask, score, box in zip(got, want["masks"], want["scores"], want["boxes"]):
            assert inst["score"] == pytest.approx(float(score), abs=SCORE_TOL)
            assert mask_iou(decode_rle(inst["rle"]), mask) >= IOU_MIN
            np.testing.assert_allclose(inst["box_xyxy"], box, atol=1e-2)
    click = _segment(
        families, {"model_id": SAM3, "image_id": body["image_id"], "multimask_output": False, "prompts": [{"points": [[*CLICK, 1]]}]}
    )
    assert click["encode_cached"]
    ref_masks, ref_iou = tracker_reference(tracker, truck_rgb, False, np.array([CLICK], np.float32), np.array([1], np.int32))
    got = decode_rle(click["results"][0]["masks"][0]["rle"])
    assert got.any() and not got.all()
    assert mask_iou(got, ref_masks[0]) >= IOU_MIN
    assert click["results"][0]["masks"][0]["predicted_iou"] == pytest.approx(float(ref_iou[0]), abs=SCORE_TOL)
    after = families.get("/v1/stats").json()["cache_by_model"][SAM3]["encodes"]
    assert after == before + 1  # one encode served both kinds of prompt


def test_predict_classes_label_every_instance_on_sam3(families, truck_b64):
    body = families.post("/v1/predict", json={"model_id": SAM3, "image": {"base64": truck_b64}, "classes": ["truck", "a wheel"]})
    assert body.status_code == 200, body.text
    out = body.json()
    assert out["collection"] is None and out["instances"]
    assert {i["label_source"] for i in out["instances"]} == {"classes"}
    assert {i["label"] for i in out["instances"]} <= {"truck", "a wheel"}
    scores = [i["confidence"] for i in out["instances"]]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.5
    seg = _segment(families, {"model_id": SAM3, "image_id": out["image_id"], "prompts": [{"text": "truck"}]})
    assert sorted(i["score"] for i in seg["results"][0]["instances"]) == pytest.approx(
        sorted(i["confidence"] for i in out["instances"] if i["label"] == "truck"), abs=1e-6
    )


LS_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="truck"/><Label value="dog"/></BrushLabels>
  <TextArea name="prompt" toName="image"/>
</View>
"""


def test_label_studio_on_sam3_prelabels_with_the_configs_names_as_concepts(families, truck_b64):
    """Label Studio's protocol on SAM 3 (the connection's *Extra params* name the model; no Label Studio
    needed: the task's image is a ``data:`` URL): *Retrieve predictions* (no context) answers every instance
    of each label name of the config, as ``/v1/predict``'s ``classes`` finds them; a typed text (a
    ``TextArea`` context) is a concept prompt: every instance of it, as ``/v1/segment``'s text prompt."""
    pytest.importorskip("label_studio_sdk.converter.brush", reason="label-studio-sdk is not installed")
    from serve_app.labelstudio import brush_mask

    w, h = 1800, 1200  # truck.jpg
    setup = {"project": "901.1700000000", "schema": LS_CONFIG, "extra_params": {"model_id": SAM3}}
    answer = families.post("/integrations/label-studio/setup", json=setup)
    assert answer.status_code == 200 and answer.json() == {"model_version": f"samgraph-{SAM3}"}, answer.text
    task = {"id": 1, "data": {"image": f"data:image/jpeg;base64,{truck_b64}"}}
    body = {"tasks": [task], "project": setup["project"], "label_config": LS_CONFIG}

    def regions(params: dict | None) -> list[dict]:
        r = families.post("/integrations/label-studio/predict", json={**body, "params": params})
        assert r.status_code == 200, r.text
        (prediction,) = r.json()["results"]
        assert prediction["model_version"] == f"samgraph-{SAM3}"
        for region in prediction["result"]:
            assert region["type"] == "brushlabels" and region["from_name"] == "tag"
            assert brush_mask(region["value"]["rle"], w, h).any()
        return prediction["result"]

    classes = families.post("/v1/predict", json={"model_id": SAM3, "image": {"base64": truck_b64}, "classes": ["truck", "dog"]})
    found = sorted((i["label"], round(i["confidence"], 5)) for i in classes.json()["instances"])
    prelabelled = regions(None)
    assert prelabelled and sorted((r["value"]["brushlabels"][0], round(r["score"], 5)) for r in prelabelled) == found

    typed = {"context": {"result": [{"type": "textarea", "from_name": "prompt", "to_name": "image", "value": {"text": ["truck"]}}]}}
    clicked = regions(typed)
    text = _segment(families, {"model_id": SAM3, "image": {"base64": truck_b64}, "prompts": [{"text": "truck"}]})
    instances = text["results"][0]["instances"]
    assert clicked and len(clicked) == len(instances)
    assert {r["value"]["brushlabels"][0] for r in clicked} == {"truck"}
    assert sorted(round(r["score"], 5) for r in clicked) == sorted(round(min(1.0, i["score"]), 5) for i in instances)


def test_two_families_on_one_image_keep_their_own_caches(families, truck_b64):
    """The same image on SAM 2 and MobileSAM: each encodes it once in its own decoder's cache."""
    stats = families.get("/v1/stats").json()["cache_by_model"]
    request = {"image": {"base64": truck_b64}, "prompts": [{"box_xyxy": TRUCK_BOX}], "multimask_output": False}
    sam2 = _segment(families, request)
    mobile = _segment(families, {**request, "model_id": MOBILE})
    assert (sam2["model_id"], mobile["model_id"]) == (MODEL_ID, MOBILE) and sam2["image_id"] == mobile["image_id"]
    again = _segment(families, {**request, "model_id": MOBILE})
    assert again["encode_cached"]
    after = families.get("/v1/stats").json()["cache_by_model"]
    assert after[MOBILE]["encodes"] == stats[MOBILE]["encodes"]  # the truck was already encoded by MobileSAM
    masks = [decode_rle(b["results"][0]["masks"][0]["rle"]) for b in (sam2, mobile)]
    assert not np.array_equal(*masks)  # two models, two answers


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"prompts": [{"text": "truck", "exemplars": [{"box_xyxy": TRUCK_BOX}]}]}, "prompts[0].exemplars", "unsupported_by_model"),
        ({"model_id": MOBILE, "prompts": [{"exemplars": [{"box_xyxy": TRUCK_BOX, "label": 0}]}]}, "prompts[0].exemplars", "unsupported_by_model"),
        ({"model_id": "sam2.1_hiera_large", "prompts": [{"box_xyxy": TRUCK_BOX}]}, "model_id", "invalid_request"),
    ],
    ids=["exemplars-on-sam2", "exemplars-on-mobile-sam", "model-not-served"],
)
def test_what_a_model_cannot_do_is_a_422_naming_the_field_and_the_model(families, truck_b64, body, field, code):
    r = families.post("/v1/segment", json={"image": {"base64": truck_b64}, **body})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    model = body.get("model_id", MODEL_ID)
    assert model in error["message"]
    r = families.post("/v1/predict", json={"model_id": MOBILE, "image": {"base64": truck_b64}, "classes": ["truck"]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "classes" and MOBILE in r.json()["error"]["message"]


def test_a_text_on_a_model_without_concepts_is_ranked_by_clip(families, truck_b64):
    body = _segment(families, {"model_id": MOBILE, "image": {"base64": truck_b64}, "prompts": [{"text": "truck"}]})
    result = body["results"][0]
    assert result["text_method"] == "clip_rank" and result["masks"] and "text_score" in result["masks"][0]
