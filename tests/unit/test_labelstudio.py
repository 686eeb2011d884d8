"""The Label Studio backend's pure parts: label configs, the annotator's context, and the regions Label
Studio reads back (brush RLE through label-studio-sdk's own decoder, polygons rasterised back)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from models.polygons import mask_to_polygons, polygons_to_mask
from serve_app.ingress.access import _bearer, is_protected
from serve_app.labelstudio import (
    BackendOptions,
    brush_mask,
    brush_result,
    instances_prediction,
    parse_context,
    parse_extra_params,
    parse_label_config,
    polygon_results,
    prediction,
)
from serve_app.task_images import ImageUnavailable, LabelStudioHost, TaskImages, project_id

CONFIG = """
<View>
  <Header value="Click an object"/>
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
  </RectangleLabels>
</View>
"""


def test_label_config_names_the_image_key_mask_control_and_labels():
    config = parse_label_config(CONFIG)
    assert (config.image_name, config.image_key) == ("image", "image")
    assert [c.tag for c in config.controls] == ["BrushLabels", "KeyPointLabels", "RectangleLabels"]
    assert config.mask_control.name == "tag" and config.mask_control.to_name == "image"
    assert config.label_names == ("truck", "dog")


def test_polygons_in_the_config_make_polygon_answers():
    xml = CONFIG.replace("</View>", '<PolygonLabels name="poly" toName="image"><Label value="cat"/></PolygonLabels></View>')
    config = parse_label_config(xml)
    assert config.mask_control.tag == "PolygonLabels" and config.label_names == ("cat",)


@pytest.mark.parametrize(
    "xml, reason",
    [
        (CONFIG.replace("<Header", "<Video name='v' value='$v'/><Header"), "tag <Video> is not supported"),
        ("<View><BrushLabels name='t' toName='i'><Label value='a'/></BrushLabels></View>", "exactly one <Image>"),
        ("<View><Image name='i' value='$i'/><KeyPointLabels name='k' toName='i'/></View>", "BrushLabels or Polygon"),
        ("<View><Image name='i' value='$i'/><BrushLabels name='t' toName='i'/></View>", "has no labels"),
        ("<View><Image name='i' value='$i'/><BrushLabels toName='i'/></View>", "needs name and toName"),
        ("<View><Image name='i' value='$i'>", "not valid XML"),
        ("", "empty"),
    ],
)
def test_a_config_samgraph_cannot_answer_is_refused_with_the_reason(xml, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        parse_label_config(xml)


def _region(kind, value, positive=True, w=1800, h=1200):
    return {"type": kind, "value": value, "original_width": w, "original_height": h, "is_positive": positive}


def test_context_clicks_become_pixel_prompts():
    ctx = {
        "result": [
            _region("keypointlabels", {"x": 50.0, "y": 25.0, "width": 1, "keypointlabels": ["truck"]}),
            _region("keypointlabels", {"x": 10.0, "y": 10.0, "keypointlabels": ["dog"]}, positive=False),
            _region("rectanglelabels", {"x": 10, "y": 20, "width": 50, "height": 25, "rectanglelabels": ["truck"]}),
        ]
    }
    click = parse_context(ctx)
    assert click.points == ((900.0, 300.0, 1), (180.0, 120.0, 0))
    assert click.box_xyxy == pytest.approx((180.0, 240.0, 1080.0, 540.0))
    assert click.label == "truck" and (click.width, click.height) == (1800, 1200)
    assert parse_context({}) is None and parse_context({"result": []}) is None
    texts = parse_context({"result": [{"type": "textarea", "value": {"text": ["red truck", " "]}}]})
    assert texts.texts == ("red truck",) and texts.points == ()


@pytest.mark.parametrize(
    "region, reason",
    [
        ({"type": "choices", "value": {}}, "not a prompt samgraph takes"),
        ({"type": "keypointlabels", "value": {"x": 1}}, "needs original_width"),
        (_region("rectanglelabels", {"x": 1, "y": 1}), "needs value.width"),
    ],
)
def test_bad_context_is_refused(region, reason):
    with pytest.raises(ValueError, match=reason):
        parse_context({"result": [region]})


def test_brush_result_decodes_with_label_studios_decoder_to_the_mask():
    pytest.importorskip("label_studio_sdk.converter.brush", reason="label-studio-sdk is not installed")
    rng = np.random.default_rng(0)
    mask = np.zeros((37, 53), bool)
    mask[5:30, 8:40] = True
    mask &= rng.random(mask.shape) > 0.2  # ragged runs, not only one rectangle
    control = parse_label_config(CONFIG).mask_control
    region = brush_result(mask, control, "dog", score=0.75)
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["dog"]
    assert (region["from_name"], region["to_name"]) == ("tag", "image")
    assert (region["original_width"], region["original_height"], region["score"]) == (53, 37, 0.75)
    assert region["value"]["format"] == "rle" and all(isinstance(v, int) for v in region["value"]["rle"])
    np.testing.assert_array_equal(brush_mask(region["value"]["rle"], 53, 37), mask)
    with pytest.raises(ValueError, match="decodes to"):
        brush_mask(region["value"]["rle"], 52, 37)


def test_polygon_results_rasterise_back_to_the_mask():
    mask = np.zeros((40, 60), bool)
    mask[4:20, 5:25] = True
    mask[25:35, 30:55] = True  # two parts: two regions
    control = parse_label_config(CONFIG.replace("BrushLabels", "PolygonLabels")).mask_control
    regions = polygon_results(mask_to_polygons(mask), control, "truck", 60, 40, score=0.5)
    assert [r["type"] for r in regions] == ["polygonlabels", "polygonlabels"]
    assert all(r["value"]["polygonlabels"] == ["truck"] and r["value"]["closed"] for r in regions)
    rings = [{"exterior": [[x / 100 * 60, y / 100 * 40] for x, y in r["value"]["points"]], "holes": []} for r in regions]
    np.testing.assert_array_equal(polygons_to_mask(rings, 40, 60), mask)


def test_prediction_scores_are_the_mean_of_its_regions():
    assert prediction([{"score": 0.5}, {"score": 1.0}], "v")["score"] == pytest.approx(0.75)
    assert prediction([], "v") == {"result": [], "score": 0.0, "model_version": "v"}


def test_task_image_urls_resolve_against_label_studio_with_its_token():
    images = TaskImages(max_bytes=100, environ={})
    assert images.host("3.1700000000") is None
    images.remember_setup("3.1700000000", "http://ls.local:8080/", "tok")
    host = images.host("3.99")
    assert host == LabelStudioHost("http://ls.local:8080", "tok") and project_id("3.99") == "3"
    assert images.resolve("/data/upload/3/a.jpg", host) == (
        "http://ls.local:8080/data/upload/3/a.jpg",
        {"Authorization": "Token tok"},
    )
    assert images.resolve("https://example.org/a.jpg", host) == ("https://example.org/a.jpg", {})
    with pytest.raises(ImageUnavailable, match="LABEL_STUDIO_URL"):
        images.resolve("/data/upload/3/a.jpg", None)
    with pytest.raises(ImageUnavailable, match="scheme 'file'"):
        images.resolve("file:///etc/passwd", host)
    env = TaskImages(100, environ={"LABEL_STUDIO_URL": "http://ls:1/", "LABEL_STUDIO_API_KEY": "k"})
    assert env.host("3.1") == LabelStudioHost("http://ls:1", "k")  # the environment wins over setup


def test_label_studio_basic_auth_presents_its_password_as_the_key():
    basic = base64.b64encode(b"samgraph:the-api-key-0123456789").decode()
    assert _bearer({"headers": [(b"authorization", f"Basic {basic}".encode())]}) == "the-api-key-0123456789"
    assert _bearer({"headers": [(b"authorization", b"Bearer k2")]}) == "k2"
    assert _bearer({"headers": [(b"authorization", b"Basic !!notbase64")]}) is None
    assert is_protected("/integrations/label-studio/predict") and not is_protected("/healthz")


def test_whole_task_predictions_keep_the_configs_labels_in_brush_or_polygons():
    """What the online route and ``samgraph labelstudio prelabel`` both answer for labelled instances."""
    pytest.importorskip("label_studio_sdk.converter.brush", reason="label-studio-sdk is not installed")
    from models.masks import encode_rle

    mask = np.zeros((40, 60), bool)
    mask[4:20, 5:25] = True
    other = np.zeros_like(mask)
    other[25:35, 30:55] = True
    instances = [
        {"label": "truck", "confidence": 0.8, "rle": encode_rle(mask)},
        {"label": "cat", "confidence": 0.9, "rle": encode_rle(other)},  # not a name of the config: left out
        {"label": None, "confidence": 0.0, "rle": encode_rle(other)},  # no vote
        {"label": "dog", "confidence": 1.5, "rle": encode_rle(other)},  # clamped to 1
    ]
    brush = instances_prediction(instances, parse_label_config(CONFIG), 60, 40, "sam2.1_hiera_tiny")
    assert brush["model_version"] == "samgraph-sam2.1_hiera_tiny"
    assert [(r["value"]["brushlabels"], r["score"]) for r in brush["result"]] == [(["truck"], 0.8), (["dog"], 1.0)]
    np.testing.assert_array_equal(brush_mask(brush["result"][0]["value"]["rle"], 60, 40), mask)
    assert brush["score"] == pytest.approx(0.9)
    polygons = instances_prediction(instances, parse_label_config(CONFIG.replace("BrushLabels", "PolygonLabels")), 60, 40, "m")
    (truck, dog) = polygons["result"]  # polygons made from the RLE: one region per part
    ring = [{"exterior": [[x / 100 * 60, y / 100 * 40] for x, y in truck["value"]["points"]], "holes": []}]
    np.testing.assert_array_equal(polygons_to_mask(ring, 40, 60), mask)
    assert dog["value"]["polygonlabels"] == ["dog"]


def test_extra_params_choose_the_model_and_collection():
    assert parse_extra_params(None) == parse_extra_params("") == BackendOptions()
    assert parse_extra_params({"collection": "mine"}) == BackendOptions(None, "mine")
    assert parse_extra_params('{"model_id": "sam3", "collection": "a-b"}') == BackendOptions("sam3", "a-b")
    for bad, reason in (("{", "not valid JSON"), ("[1]", "JSON object"), ({"colection": "x"}, "unknown key"),
                        ({"collection": "a b"}, "must be a name")):
        with pytest.raises(ValueError, match=reason):
            parse_extra_params(bad)
    images = TaskImages(max_bytes=100, environ={})
    assert images.options("4.1") == BackendOptions()
    images.remember_setup("4.1", None, None, BackendOptions(collection="mine"))
    assert images.options("4.2") == BackendOptions(collection="mine")  # per project id, whatever its timestamp
