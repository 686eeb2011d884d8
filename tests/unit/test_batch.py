"""The offline pipeline's parts without Ray: inputs, settings, stages (same models as Meta's), writers."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from deployments.offline_stages import DecodeMasks, EncodeImages, LoadImages, batch_rows, object_column, prompt_specs
from models.masks import decode_rle
from models.prompts import PromptError
from serve_app.offline.inputs import list_inputs, plan_run
from serve_app.offline.pipeline import BatchArgs, apply_overrides, load_batch_args
from serve_app.offline.writer import ResultWriter
from tests.conftest import MODEL_ID, mask_iou, shared_file

COCO_JSON = ("coco_subset", "annotations", "instances_val2017_subset32.json")


@pytest.fixture(scope="module")
def coco_path():
    return shared_file(*COCO_JSON)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two real frames, a corrupt JPEG and a text file."""
    frames = shared_file("video", "bedroom", "frames")
    folder = tmp_path_factory.mktemp("frames")
    for name in ("00000.jpg", "00001.jpg"):
        shutil.copy(frames / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _input_batch(items: list[dict]) -> dict:
    return {k: np.array([it[k] for it in items], dtype=object) for k in items[0]}


def test_folder_inputs_skip_non_images_and_number_in_name_order(image_folder):
    data = list_inputs(image_folder)
    assert [p.rsplit("/", 1)[-1] for p in (it["path"] for it in data.items)] == ["00000.jpg", "00001.jpg", "broken.jpg"]
    assert [it["image_id"] for it in data.items] == [1, 2, 3]
    assert data.skipped and data.skipped[0][0].endswith("notes.txt") and "not an image" in data.skipped[0][1]
    assert data.coco_path is None and data.categories == {}
    assert len(list_inputs(image_folder, limit=1).items) == 1


def test_coco_inputs_find_their_images_folder(coco_path):
    data = list_inputs(coco_path)
    assert len(data.items) == 32 and data.categories[1] == "person"
    first = data.items[0]
    assert first["path"].endswith("val2017/000000006818.jpg") and first["image_id"] == 6818
    assert [a["category_id"] for a in json.loads(first["anns"])] == [70]
    with pytest.raises(FileNotFoundError, match="images folder"):
        list_inputs(coco_path, images_dir=coco_path.parent / "nowhere")


def test_bad_inputs_are_refused(tmp_path, coco_path, image_folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_inputs(tmp_path / "missing")
    (tmp_path / "x.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO annotation file"):
        list_inputs(tmp_path / "x.json")
    folder = list_inputs(image_folder)
    with pytest.raises(ValueError, match="coco-boxes needs a COCO"):
        plan_run(folder, "coco-boxes", False, False, "default", False)
    with pytest.raises(ValueError, match="--add-examples needs a COCO"):
        plan_run(folder, None, False, True, "default", False)
    with pytest.raises(ValueError, match="run --add-examples first"):
        plan_run(list_inputs(coco_path), None, True, True, "default", False)
    assert plan_run(folder, None, False, False, "default", False).prompts == "center-points"
    assert plan_run(list_inputs(coco_path), None, False, False, "default", False).prompts == "coco-boxes"


def test_settings_overrides_are_typed_and_validated():
    args = load_batch_args(
        [
            "encode.batch_size=4",
            "decode.concurrency=2",
            "encode.num_gpus=0.5",
            "amg.points_per_side=8",
            "weights=random",
        ]
    )
    assert (args.encode.batch_size, args.decode.concurrency, args.encode.num_gpus, args.amg.points_per_side) == (
        4,
        2,
        0.5,
        8,
    )
    assert args.weights == "random"
    with pytest.raises(ValueError, match=r"encode\.batch_size"):
        load_batch_args(["encode.batch_size=0"])
    with pytest.raises(ValueError, match="bogus"):
        load_batch_args(["encode.bogus=1"])
    with pytest.raises(ValueError, match="key.sub=value"):
        apply_overrides({}, ["encode.batch_size"])
    # the defaults fit a 2-core machine and match the online service's
    d = BatchArgs()
    assert sum(
        getattr(d, s).num_cpus for s in ("load", "encode", "decode", "fade", "embed", "retrieve")
    ) == pytest.approx(2.0)
    assert (d.top_k, d.min_score, d.max_instances) == (5, 0.0, 20)


def test_load_stage_reports_unreadable_files_and_builds_prompts(image_folder, coco_path):
    stage = LoadImages("center-points", False, {}, 50_000_000)
    rows = batch_rows(stage(_input_batch(list_inputs(image_folder).items)))
    ok, broken = rows[:2], rows[2]
    assert broken["error"].startswith("InvalidImage") and "not an image" in broken["error"]
    for r in ok:
        assert r["error"] == "" and r["image"].shape == (540, 960, 3)
        assert r["prompts"] == [{"ann_id": None, "category_id": None, "points": [[480.0, 270.0, 1]]}]
        (spec,), multimask = r["prompt_specs"], r["multimask"]
        assert multimask == [True] and spec.point_coords.tolist() == [[480.0, 270.0]] and spec.box_xyxy is None
    data = list_inputs(coco_path, limit=3)
    boxes = batch_rows(LoadImages("coco-boxes", True, data.categories, 50_000_000)(_input_batch(data.items)))
    anns = json.loads(data.items[1]["anns"])
    x, y, w, h = anns[0]["bbox"]
    assert boxes[1]["prompts"][0] == {
        "ann_id": anns[0]["id"],
        "category_id": anns[0]["category_id"],
        "box_xyxy": [x, y, x + w, y + h],
    }
    assert len(boxes[1]["examples"]) == len([a for a in anns if not a["iscrowd"]])
    assert boxes[1]["examples"][0]["label"] == data.categories[anns[0]["category_id"]]
    points = batch_rows(LoadImages("center-points", False, data.categories, 50_000_000)(_input_batch(data.items)))
    for p, ex in zip(points[1]["prompts"], boxes[1]["examples"]):
        ((px, py, label),) = p["points"]
        assert label == 1 and decode_rle(ex["rle"])[py, px]  # the click lies inside its object


def test_encode_and_decode_stages_equal_sam2_image_predictor(coco_path, tiny_checkpoint, reference_predictor):
    """Box prompts from COCO through the batch stages give the masks of Meta's predictor, per box."""
    data = list_inputs(coco_path)
    item = next(it for it in data.items if it["image_id"] == 41888)
    weights = {"kind": "file", "checkpoint": str(tiny_checkpoint), "seed": 0}
    batch = LoadImages("coco-boxes", False, data.categories, 50_000_000)(_input_batch([item]))
    batch = EncodeImages(MODEL_ID, weights, "cpu", 2)(batch)
    row = batch_rows(DecodeMasks(MODEL_ID, weights, "cpu", 2)(batch))[0]
    assert "features" not in row and set(row["timing_ms"]) == {"load", "encode", "decode"}
    reference_predictor.set_image(row["image"])
    ours = []
    for prompt, inst in zip(row["prompts"], row["instances"], strict=True):
        masks, ious, _ = reference_predictor.predict(box=np.array(prompt["box_xyxy"]), multimask_output=False)
        mask = decode_rle(inst["rle"])
        assert mask.any()
        assert mask_iou(mask, masks[0].astype(bool)) >= 0.999
        assert inst["predicted_iou"] == pytest.approx(float(ious[0]), abs=1e-4)
        assert inst["ann_id"] == prompt["ann_id"]
        ours.append(mask)
    assert len(ours) == 3 and mask_iou(ours[0], ours[1]) < 0.99  # distinct boxes, distinct masks


def _row(path, image_id, instances, embeddings=None):
    return {"path": path, "image_id": image_id, "instances": instances, "embeddings": embeddings}


def _inst(mask, label=None, category_id=None, ann_id=None):
    from models.masks import encode_masks

    enc = encode_masks(mask[None], "rle")[0]
    return {
        **enc,
        "predicted_iou": 0.8,
        "stability_score": 0.9,
        "ann_id": ann_id,
        "category_id": category_id,
        "label": label,
        "confidence": 0.5 if label else 0.0,
        "embedded": True,
    }


def test_result_writer_outputs_load_in_pycocotools_and_parquet(tmp_path, coco_path):
    import pyarrow.parquet as pq
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_path))
    h, w = gt.imgs[41888]["height"], gt.imgs[41888]["width"]
    m1 = np.zeros((h, w), bool)
    m1[10:20, 30:50] = True
    m2 = np.zeros((h, w), bool)
    m2[100:200, 100:110] = True
    writer = ResultWriter(tmp_path / "out", with_embeddings=True, categories={16: "bird"})
    assert not (tmp_path / "out" / "results.json").exists()  # nothing visible before commit
    writer.add(
        _row("a.jpg", 41888, [_inst(m1, label="bird"), _inst(m2, label="dragon")], np.eye(2, 4, dtype=np.float32))
    )
    writer.close()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results[0]["bbox"] == [30, 10, 20, 10] and results[0]["category_id"] == 16
    assert "category_id" not in results[1]  # a label that is no COCO category
    assert results[0]["score"] == pytest.approx(0.4)  # predicted_iou x label confidence
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results[:1])
    np.testing.assert_array_equal(dt.annToMask(dt.loadAnns(dt.getAnnIds())[0]).astype(bool), m1)
    table = pq.read_table(tmp_path / "out" / "instances.parquet").to_pylist()
    assert [r["label"] for r in table] == ["bird", "dragon"] and table[1]["area_px"] == 1000
    assert table[0]["embedding"] == [1.0, 0.0, 0.0, 0.0] and table[0]["bbox_xyxy"] == [30.0, 10.0, 50.0, 20.0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["instances.parquet", "results.json"]


def test_result_writer_discards_on_failure(tmp_path):
    writer = ResultWriter(tmp_path)
    writer.add(_row("a.jpg", 1, [_inst(np.ones((4, 4), bool))]))
    writer.close(commit=False)
    assert list(tmp_path.iterdir()) == []


def test_object_column_keeps_equal_shaped_arrays_apart():
    col = object_column([np.zeros((2, 2)), np.ones((2, 2))])
    assert col.shape == (2,) and col[1].shape == (2, 2)


def test_prompt_specs_validate_as_the_segment_endpoint():
    assert prompt_specs([]) == ([], [])  # no prompts, no centre click
    meta = {"ann_id": 7, "category_id": 3}
    specs, multimask = prompt_specs([{**meta, "box_xyxy": [1, 2, 30, 40]}, {**meta, "points": [[5, 6, 1]]}])
    assert multimask == [False, True]  # a box gives one mask, a lone click three
    np.testing.assert_array_equal(specs[0].box_xyxy, np.array([1, 2, 30, 40], np.float32))
    assert specs[0].point_coords is None and specs[1].point_labels.tolist() == [1]
    np.testing.assert_array_equal(specs[1].point_coords, np.array([[5, 6]], np.float32))
    with pytest.raises(PromptError, match=r"prompts\[1\]\.box_xyxy: x1 must be greater than x0"):
        prompt_specs([{"box_xyxy": [1, 2, 30, 40]}, {"box_xyxy": [30, 40, 1, 2]}])  # inverted box
    with pytest.raises(PromptError, match=r"prompts\[0\]\.points: point 0: label must be 1, 0"):
        prompt_specs([{"points": [[5, 6, 2]]}])


def test_load_stage_reports_an_image_it_cannot_prompt(coco_path):
    """An annotation the load stage cannot turn into a prompt makes its image an error row, not a crash."""
    data = list_inputs(coco_path)
    item = dict(next(it for it in data.items if any(not a["iscrowd"] for a in json.loads(it["anns"]))))
    item["anns"] = json.dumps([{**a, "bbox": ["x", 0, 1, 1]} for a in json.loads(item["anns"])])
    with pytest.raises(ValueError, match="prompts must be one of"):
        LoadImages("boxes", False, {}, 50_000_000)
    (row,) = batch_rows(LoadImages("coco-boxes", False, data.categories, 50_000_000)(_input_batch([item])))
    assert row["error"].startswith("ValueError") and row["prompts"] == [] and row["prompt_specs"] == []


def test_the_stages_find_every_instance_of_the_classes_on_sam3_from_a_fetched_image(tmp_path, truck_path):
    """``samgraph labelstudio prelabel``'s stages on SAM 3: the load stage reads the image through its
    ``read`` (a task's ``data:`` URL, as Label Studio's tasks may hold), the decode stage answers every
    instance of each class name, labelled with it, as the family's concept decoder does in process."""
    import base64

    from deployments.runtime.model_weights import load_model
    from deployments.runtime.weights import WeightsSource
    from models.segmenter import ConceptPrompt, ConceptRequest
    from serve_app.offline.labelstudio import TaskImageReader
    from serve_app.task_images import LabelStudioHost
    from tests.conftest import SEED
    from tests.family_weights import write_sam3_tiny_checkpoint

    checkpoint = write_sam3_tiny_checkpoint(tmp_path, SEED)
    weights = {"kind": "file", "checkpoint": str(checkpoint), "seed": 0}
    url = "data:image/jpeg;base64," + base64.b64encode(truck_path.read_bytes()).decode()
    read = TaskImageReader(LabelStudioHost("http://label-studio.invalid"))
    items = [{"path": url, "image_id": 7, "anns": "[]"}, {"path": "data:text/plain,x", "image_id": 8, "anns": "[]"}]
    batch = LoadImages("auto", False, {}, 50_000_000, read=read)(_input_batch(items))
    batch = EncodeImages("sam3-tiny", weights, "cpu", 2)(batch)
    classes = ["truck", "a wheel"]
    row, bad = batch_rows(DecodeMasks("sam3-tiny", weights, "cpu", 2, classes=classes)(batch))
    assert "data: URL must be base64" in bad["error"] and row["error"] == ""

    loaded = load_model("sam3-tiny", WeightsSource.resolve("file", str(checkpoint)))
    family = loaded.family
    features = family.encoder(loaded.model).encode(row["image"])
    (want,) = family.decoder(loaded.model).segment_concepts([ConceptRequest(features, [ConceptPrompt(c) for c in classes])])
    expected = sorted((c, round(float(s), 4)) for c, found in zip(classes, want) for s in found.scores)
    got = sorted((i["label"], round(i["confidence"], 4)) for i in row["instances"])
    assert got and got == expected
    assert [i["confidence"] for i in row["instances"]] == sorted((i["confidence"] for i in row["instances"]), reverse=True)
    assert all(decode_rle(i["rle"]).shape == row["image"].shape[:2] and i["label_source"] == "classes" for i in row["instances"])
    with pytest.raises(ValueError, match="takes no concept prompts"):
        DecodeMasks(MODEL_ID, {"kind": "random", "seed": 0}, "cpu", 1, classes=classes)


def test_a_label_studio_project_is_planned_as_concepts_on_sam3_and_few_shot_labels_elsewhere():
    from serve_app.labelstudio import parse_label_config
    from serve_app.offline.labelstudio import plan_prelabel

    xml = '<View><Image name="i" value="$img"/><BrushLabels name="t" toName="i"><Label value="cat"/><Label value="dog"/></BrushLabels></View>'
    config = parse_label_config(xml)
    sam3 = plan_prelabel(config, "sam3-tiny", "default")
    assert sam3.classes == ("cat", "dog") and not sam3.predict and sam3.prompts == "auto"
    sam2 = plan_prelabel(config, MODEL_ID, "mine")
    assert sam2.predict and sam2.collection == "mine" and sam2.classes == ()
    with pytest.raises(ValueError, match="collection name"):
        plan_prelabel(config, MODEL_ID, "not a name")
