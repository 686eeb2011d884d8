"""serve_app.ingress.schemas: request validation, field paths of errors, prompts -> PromptSpec."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from pydantic import ValidationError

from deployments.errors import InputError
from models.masks import encode_logits_base64
from serve_app.ingress.errors import ApiError, field_path, from_validation_error
from serve_app.ingress.schemas import PromptIn, SegmentRequest, check_prompts_in_image, to_prompt_specs

SEED = 1234
GOOD_ID = "0123456789abcdef" * 4


def _error(body) -> ApiError:
    """The ApiError the service would send for ``body`` (a dict, or JSON text)."""
    if isinstance(body, str):
        body = json.loads(body)
    with pytest.raises(ValidationError) as info:
        SegmentRequest.model_validate(body)
    err = from_validation_error(info.value)
    assert err.status == 422
    assert err.code == "invalid_request"
    return err


def _prompt(**kw) -> PromptIn:
    return PromptIn.model_validate(kw)


def test_minimal_request_defaults():
    req = SegmentRequest.model_validate({})
    assert req.prompts == []
    assert req.image is None and req.image_id is None
    assert req.max_masks == 3
    assert req.mask_format == "rle"
    assert req.multimask_output is None
    assert req.return_logits is False


def test_valid_request():
    req = SegmentRequest.model_validate(
        {
            "image_id": GOOD_ID,
            "prompts": [{"box_xyxy": [1, 2, 3, 4], "points": [[1.5, 2, "fg"]]}],
            "mask_format": "png",
            "max_masks": 1,
        }
    )
    assert req.prompts[0].box_xyxy == [1.0, 2.0, 3.0, 4.0]
    assert req.prompts[0].points == [[1.5, 2.0, 1]]


@pytest.mark.parametrize(
    "box, message",
    [
        ([5, 0, 5, 10], "x1 must be greater than x0"),
        ([6, 0, 5, 10], "x1 must be greater than x0"),
        ([0, 5, 10, 5], "y1 must be greater than y0"),
        ([0, 6, 10, 5], "y1 must be greater than y0"),
    ],
)
def test_degenerate_box_rejected(box, message):
    err = _error({"prompts": [{"box_xyxy": box}]})
    assert err.field == "prompts[0].box_xyxy"
    assert message in err.message
    assert err.message.startswith("prompts[0].box_xyxy: ")


@pytest.mark.parametrize("box", [[0, 0, 1], [0, 0, 1, 1, 1], []])
def test_box_wrong_length_rejected(box):
    assert _error({"prompts": [{"box_xyxy": box}]}).field == "prompts[0].box_xyxy"


@pytest.mark.parametrize(
    "text, field",
    [
        ('{"prompts":[{"box_xyxy":[NaN,0,1,1]}]}', "prompts[0].box_xyxy[0]"),
        ('{"prompts":[{"box_xyxy":[0,0,Infinity,1]}]}', "prompts[0].box_xyxy[2]"),
        ('{"prompts":[{"box_xyxy":[0,0,1,-Infinity]}]}', "prompts[0].box_xyxy[3]"),
        ('{"prompts":[{"box_xyxy":[0,0,1,1]},{"points":[[Infinity,1,1]]}]}', "prompts[1].points"),
        ('{"prompts":[{"points":[[1,NaN,1]]}]}', "prompts[0].points"),
    ],
)
def test_non_finite_numbers_rejected(text, field):
    err = _error(text)
    assert err.field == field


@pytest.mark.parametrize("label, expected", [(1, 1), (0, 0), ("fg", 1), ("bg", 0)])
def test_point_labels_accepted_and_normalised(label, expected):
    p = _prompt(points=[[10, 20, label]])
    assert p.points == [[10.0, 20.0, expected]]
    assert type(p.points[0][2]) is int


def test_mixed_labels_normalised():
    p = _prompt(points=[[1, 2, "fg"], [3, 4, "bg"], [5, 6, 1], [7, 8, 0]])
    assert [pt[2] for pt in p.points] == [1, 0, 1, 0]


@pytest.mark.parametrize("label", [2, 1.0, 0.0, True, False, "x", "FG", None, -1])
def test_bad_point_labels_rejected(label):
    err = _error({"prompts": [{"points": [[1, 2, label]]}]})
    assert err.field == "prompts[0].points"
    assert "label must be 1, 0, 'fg' or 'bg'" in err.message


@pytest.mark.parametrize("label", [[1], {"a": 1}], ids=["list", "object"])
def test_unhashable_point_label_is_a_validation_error(label):
    """BUG (serve_app/ingress/schemas.py:90): ``label not in _LABELS`` raises TypeError for a JSON list or object
    label; pydantic does not turn TypeError into a ValidationError, and serve_app/app.py:131 catches only
    ValidationError, so the client gets a 500 "internal", not a 422."""
    err = _error({"prompts": [{"points": [[1, 2, label]]}]})
    assert err.field == "prompts[0].points"
    assert "label must be 1, 0, 'fg' or 'bg'" in err.message


@pytest.mark.parametrize("coord", ["1", None, True, [1]])
def test_bad_point_coordinates_rejected(coord):
    err = _error({"prompts": [{"points": [[coord, 2, 1]]}]})
    assert err.field == "prompts[0].points"
    assert "x must be a finite number" in err.message


def test_empty_points_rejected():
    err = _error({"prompts": [{"points": []}]})
    assert err.field == "prompts[0].points"
    assert "must not be empty" in err.message


@pytest.mark.parametrize("point", [[1, 2], [1, 2, 1, 0], []])
def test_point_wrong_length_rejected(point):
    err = _error({"prompts": [{"box_xyxy": [0, 0, 4, 4]}, {"points": [[1, 1, 1], point]}]})
    assert err.field == "prompts[1].points"
    assert "point 1 must be [x, y, label]" in err.message


def test_unknown_top_level_field_rejected():
    err = _error({"prompts": [], "bogus": 1})
    assert err.field == "bogus"
    assert err.message == "bogus: unknown field"


def test_unknown_prompt_field_rejected():
    err = _error({"prompts": [{"box_xyxy": [0, 0, 1, 1]}, {"points": [[0, 0, 1]], "label": 1}]})
    assert err.field == "prompts[1].label"
    assert err.message == "prompts[1].label: unknown field"


def test_unknown_mask_input_field_rejected():
    err = _error({"prompts": [{"mask_input": {"base64": "AAAA", "extra": 1}}]})
    assert err.field == "prompts[0].mask_input.extra"
    assert err.message.endswith("unknown field")


@pytest.mark.parametrize("fmt", ["RLE", "jpeg", "polygons", ""])
def test_unknown_mask_format_rejected(fmt):
    assert _error({"mask_format": fmt}).field == "mask_format"


@pytest.mark.parametrize("fmt", ["rle", "png", "polygon", "none"])
def test_mask_formats_accepted(fmt):
    assert SegmentRequest.model_validate({"mask_format": fmt}).mask_format == fmt


def test_image_and_image_id_together_accepted():
    """Resend on miss: both may come together (the ingress checks that the id is the bytes' SHA-256)."""
    req = SegmentRequest.model_validate({"image": {"base64": "AAAA"}, "image_id": GOOD_ID})
    assert req.image_id == GOOD_ID and req.image.base64 == "AAAA"


@pytest.mark.parametrize(
    "image_id",
    ["0123456789ABCDEF" * 4, "0123456789abcdef" * 4 + "0", ("0123456789abcdef" * 4)[:-1], "g" * 64, "", " " + "a" * 63],
    ids=["upper", "65", "63", "non-hex", "empty", "space"],
)
def test_bad_image_id_rejected(image_id):
    assert _error({"image_id": image_id}).field == "image_id"


def test_good_image_id_accepted():
    assert SegmentRequest.model_validate({"image_id": GOOD_ID}).image_id == GOOD_ID


@pytest.mark.parametrize("n", [0, 4, -1])
def test_max_masks_out_of_range_rejected(n):
    assert _error({"max_masks": n}).field == "max_masks"


@pytest.mark.parametrize("n", [1, 2, 3])
def test_max_masks_in_range_accepted(n):
    assert SegmentRequest.model_validate({"max_masks": n}).max_masks == n


def test_empty_prompt_rejected():
    err = _error({"prompts": [{"box_xyxy": [0, 0, 1, 1]}, {}]})
    assert err.field == "prompts[1]"
    assert "a prompt needs box_xyxy, points, mask_input, text or exemplars" in err.message
    err = _error({"prompts": [{"box_xyxy": None, "points": None}]})
    assert err.field == "prompts[0]"


def test_empty_image_base64_rejected():
    assert _error({"image": {"base64": ""}}).field == "image.base64"


def test_mask_input_bad_shape_rejected():
    err = _error({"prompts": [{"mask_input": {"base64": "AAAA", "shape": [128, 128]}}]})
    assert err.field == "prompts[0].mask_input.shape"


def test_field_path_helper():
    assert field_path(("prompts", 0, "box_xyxy", 2)) == "prompts[0].box_xyxy[2]"
    assert field_path(()) is None
    assert field_path(("image",)) == "image"


def test_api_error_body():
    err = ApiError(422, "out_of_image", "msg", "prompts[0].box_xyxy")
    assert err.body() == {"error": {"code": "out_of_image", "message": "msg", "field": "prompts[0].box_xyxy"}}
    assert err.body("rid")["error"]["request_id"] == "rid"


# --- check_prompts_in_image -------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompts, field",
    [
        ([{"box_xyxy": [-1, 0, 10, 10]}], "prompts[0].box_xyxy"),
        ([{"box_xyxy": [0, -0.5, 10, 10]}], "prompts[0].box_xyxy"),
        ([{"box_xyxy": [0, 0, 100.5, 10]}], "prompts[0].box_xyxy"),
        ([{"box_xyxy": [0, 0, 10, 51]}], "prompts[0].box_xyxy"),
        ([{"box_xyxy": [0, 0, 10, 10]}, {"box_xyxy": [90, 40, 101, 50]}], "prompts[1].box_xyxy"),
        ([{"points": [[0, 0, 1], [101, 10, 1]]}], "prompts[0].points[1]"),
        ([{"points": [[-0.1, 10, 1]]}], "prompts[0].points[0]"),
        ([{"points": [[10, 50.01, 0]]}], "prompts[0].points[0]"),
        ([{"points": [[10, -1, 0]]}], "prompts[0].points[0]"),
        ([{"box_xyxy": [0, 0, 10, 10], "points": [[5, 5, 1], [5, 5, 0], [5, 60, 1]]}], "prompts[0].points[2]"),
    ],
)
def test_out_of_image_rejected(prompts, field):
    ps = [PromptIn.model_validate(p) for p in prompts]
    with pytest.raises(InputError) as info:
        check_prompts_in_image(ps, 100, 50)
    assert info.value.status == 422
    assert info.value.code == "out_of_image"
    assert info.value.field == field


def test_coordinates_on_the_border_accepted():
    ps = [
        _prompt(box_xyxy=[0, 0, 100, 50]),
        _prompt(points=[[0, 0, 1], [100, 50, 0], [100, 0, 1], [0, 50, 1]]),
        _prompt(box_xyxy=[99.5, 49.5, 100, 50], points=[[50, 25, 1]]),
    ]
    check_prompts_in_image(ps, 100, 50)  # no exception
    check_prompts_in_image([], 100, 50)


# --- to_prompt_specs -------------------------------------------------------------------------


def test_no_prompts_gives_centre_click():
    specs, multimask = to_prompt_specs([], 101, 50)
    assert multimask == [True]
    assert len(specs) == 1
    spec = specs[0]
    np.testing.assert_array_equal(spec.point_coords, np.array([[50.5, 25.0]], np.float32))
    np.testing.assert_array_equal(spec.point_labels, np.array([1], np.int32))
    assert spec.box_xyxy is None and spec.mask_input is None


def _logits_dict(seed: int = SEED) -> dict:
    return encode_logits_base64(np.random.default_rng(seed).normal(size=(256, 256)).astype(np.float32))


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ({"points": [[1, 1, 1]]}, True),
        ({"points": [[1, 1, 0]]}, True),
        ({"points": [[1, 1, 1], [2, 2, 0]]}, False),
        ({"box_xyxy": [0, 0, 5, 5]}, False),
        ({"box_xyxy": [0, 0, 5, 5], "points": [[1, 1, 1]]}, False),
        ({"points": [[1, 1, 1]], "mask_input": "LOGITS"}, False),
        ({"mask_input": "LOGITS"}, False),
    ],
    ids=["point", "bg-point", "two-points", "box", "box+point", "point+mask", "mask"],
)
def test_default_multimask(prompt, expected):
    if prompt.get("mask_input") == "LOGITS":
        prompt = {**prompt, "mask_input": _logits_dict()}
    p = PromptIn.model_validate(prompt)
    assert p.to_prompt().multimask is expected
    _, flags = to_prompt_specs([p], 10, 10)
    assert flags == [expected]


def test_to_prompt_specs_box_then_points():
    logits = np.random.default_rng(SEED).normal(size=(256, 256)).astype(np.float32)
    ps = [
        _prompt(box_xyxy=[1, 2, 30, 40], points=[[5, 6, "fg"], [7, 8, "bg"]]),
        _prompt(points=[[9.5, 10.25, 0]]),
        _prompt(box_xyxy=[0, 0, 10, 10], mask_input=encode_logits_base64(logits)),
    ]
    specs, flags = to_prompt_specs(ps, 100, 100)
    assert flags == [False, True, False]
    a, b, c = specs
    np.testing.assert_array_equal(a.box_xyxy, np.array([1, 2, 30, 40], np.float32))
    assert a.box_xyxy.dtype == np.float32
    np.testing.assert_array_equal(a.point_coords, np.array([[5, 6], [7, 8]], np.float32))
    assert a.point_coords.dtype == np.float32
    np.testing.assert_array_equal(a.point_labels, np.array([1, 0], np.int32))
    assert a.point_labels.dtype == np.int32
    assert a.mask_input is None
    assert a.num_tokens == 4  # box counts as two, then two clicks
    assert b.box_xyxy is None and b.num_tokens == 1
    np.testing.assert_array_equal(b.point_coords, np.array([[9.5, 10.25]], np.float32))
    np.testing.assert_array_equal(b.point_labels, np.array([0], np.int32))
    assert c.num_tokens == 2 and c.point_coords is None
    np.testing.assert_array_equal(c.mask_input, logits)


def test_to_prompt_specs_float16_mask_input():
    logits = np.random.default_rng(SEED).normal(size=(256, 256)).astype("<f2")
    p = _prompt(mask_input={"base64": base64.b64encode(logits.tobytes()).decode(), "dtype": "float16"})
    (spec,), _ = to_prompt_specs([p], 10, 10)
    assert spec.mask_input.dtype == np.float32
    np.testing.assert_array_equal(spec.mask_input, logits.astype(np.float32))


@pytest.mark.parametrize(
    "mask_input",
    [
        {"base64": base64.b64encode(np.zeros(100, "<f4").tobytes()).decode()},
        {"base64": base64.b64encode(np.zeros((256, 256), "<f2").tobytes()).decode()},  # float16 bytes as float32
        {"base64": "not base64!"},
        {"base64": base64.b64encode(np.full((256, 256), np.nan, "<f4").tobytes()).decode()},
    ],
    ids=["short", "half-count", "bad-base64", "nan"],
)
def test_bad_mask_input_gives_422_with_field(mask_input):
    ps = [_prompt(box_xyxy=[0, 0, 5, 5]), _prompt(points=[[1, 1, 1]], mask_input=mask_input)]
    with pytest.raises(ApiError) as info:
        to_prompt_specs(ps, 10, 10)
    assert info.value.status == 422
    assert info.value.code == "invalid_request"
    assert info.value.field == "prompts[1].mask_input"


def _video_error(body: dict) -> ApiError:
    from serve_app.ingress.video_schemas import VideoRequest

    with pytest.raises(ValidationError) as info:
        VideoRequest.model_validate(body)
    return from_validation_error(info.value)


BOX = {"box_xyxy": [0, 0, 5, 5]}


@pytest.mark.parametrize(
    ("make", "limit", "field"),
    [
        (lambda n: {"prompts": [BOX] * n}, 64, "prompts"),
        (lambda n: {"prompts": [{"points": [[1, 1, 1]] * n}]}, 64, "prompts[0].points"),
        (lambda n: {"prompts": [{"text": "a" * n}]}, 300, "prompts[0].text"),
    ],
    ids=["prompts per request", "points per prompt", "text length"],
)
def test_counts_past_their_limit_are_422_naming_the_field(make, limit, field):
    """Request size beyond bytes: at the limit a request is accepted, one past it is a 422 naming the field."""
    SegmentRequest.model_validate({"image_id": GOOD_ID, **make(limit)})
    err = _error({"image_id": GOOD_ID, **make(limit + 1)})
    assert err.field == field and (err.status, err.code) == (422, "invalid_request")


@pytest.mark.parametrize(("n_objects", "n_prompts", "field"), [(33, 1, "objects"), (1, 65, "objects[0].prompts")])
def test_video_counts_past_their_limit_are_422_naming_the_field(n_objects, n_prompts, field):
    from serve_app.ingress.video_schemas import VideoRequest

    def prompts(n):  # one prompt per frame, as the tracker takes them
        return [{"frame_index": f, **BOX} for f in range(n)]

    ok = [{"obj_id": i, "prompts": prompts(min(n_prompts, 64))} for i in range(min(n_objects, 32))]
    VideoRequest.model_validate({"frames": [{"base64": "x"}], "objects": ok})
    over = [{"obj_id": i, "prompts": prompts(n_prompts)} for i in range(n_objects)]
    err = _video_error({"frames": [{"base64": "x"}], "objects": over})
    assert err.field == field and (err.status, err.code) == (422, "invalid_request")


@pytest.mark.parametrize("route", ["segment", "predict"])
def test_amg_points_per_batch_is_not_a_request_field(route):
    """A request cannot set the decoder's clicks per pass (its peak memory): 422 naming the field; the
    app's ``amg.points_per_batch`` config is used."""
    from serve_app.ingress.schemas import PredictRequest

    model = {"segment": SegmentRequest, "predict": PredictRequest}[route]
    model.model_validate({"image_id": GOOD_ID, "amg": {"points_per_side": 8}})
    with pytest.raises(ValidationError) as info:
        model.model_validate({"image_id": GOOD_ID, "amg": {"points_per_batch": 1024}})
    err = from_validation_error(info.value)
    assert (err.status, err.code, err.field) == (422, "invalid_request", "amg.points_per_batch")
