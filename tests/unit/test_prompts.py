"""models.prompts: the prompt vocabulary below HTTP; its rules, its dict form, and that the HTTP schemas
convert into it (same decoder prompts, same rule messages)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from pydantic import ValidationError

from models.masks import encode_logits_base64
from models.prompts import LOW_RES_MASK_SIZE, Prompt, PromptError, PromptSpec, decoder_prompts
from serve_app.ingress.schemas import PromptIn, to_prompt_specs

SEED = 0


def _logits() -> np.ndarray:
    return np.random.default_rng(SEED).normal(size=(LOW_RES_MASK_SIZE,) * 2).astype(np.float32)


def test_sequences_become_arrays_of_the_documented_dtypes():
    p = Prompt(box_xyxy=[1, 2, 30, 40], point_coords=[[5, 6], [7.5, 8]], point_labels=[1, 0])
    assert p.box_xyxy.dtype == np.float32 and p.box_xyxy.tolist() == [1, 2, 30, 40]
    assert p.point_coords.dtype == np.float32 and p.point_coords.shape == (2, 2)
    assert p.point_labels.dtype == np.int32 and p.point_labels.tolist() == [1, 0]
    spec = p.to_spec()
    assert isinstance(spec, PromptSpec) and spec.num_tokens == 4  # a box counts as two, then two clicks


@pytest.mark.parametrize(
    "kwargs, field, message",
    [
        ({"box_xyxy": [30, 0, 10, 5]}, "box_xyxy", "x1 must be greater than x0"),
        ({"box_xyxy": [0, 9, 10, 5]}, "box_xyxy", "y1 must be greater than y0"),
        ({"box_xyxy": [0, 0, float("nan"), 5]}, "box_xyxy", "finite"),
        ({"box_xyxy": [0, 0, 5]}, "box_xyxy", "4 numbers"),
        ({"box_xyxy": 5}, "box_xyxy", "4 numbers"),
        ({"point_coords": [[1, 2]]}, "point_labels", "given together"),
        ({"point_coords": [[1, 2, 3]], "point_labels": [1]}, "point_coords", "(N, 2)"),
        ({"point_coords": np.zeros((0, 2)), "point_labels": np.zeros(0)}, "point_coords", "N >= 1"),
        ({"point_coords": [[1, np.inf]], "point_labels": [1]}, "point_coords", "finite"),
        ({"point_coords": [[1, 2]], "point_labels": [2]}, "point_labels", "1 (foreground) or 0 (background)"),
        ({"mask_input": np.zeros((64, 64), np.float32)}, "mask_input", "(256, 256)"),
        ({"text": "  "}, "text", "non-blank"),
        ({"text": "a car", "box_xyxy": [0, 0, 1, 1]}, "text", "stands alone"),
        ({}, "prompt", "needs box_xyxy, points, mask_input or text"),
        ({"box_xyxy": [0, 0, 1, 1], "multimask_output": "yes"}, "multimask_output", "true, false or None"),
    ],
)
def test_each_rule_names_its_field(kwargs, field, message):
    with pytest.raises(PromptError) as info:
        Prompt(**kwargs)
    assert info.value.field == field and message in info.value.message
    assert str(info.value).startswith(f"{field}: ") and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "data, multimask",
    [
        ({"points": [[1, 1, "fg"]]}, True),  # a lone click: three candidates
        ({"points": [[1, 1, 1], [2, 2, "bg"]]}, False),
        ({"box_xyxy": [0, 0, 5, 5]}, False),
        ({"box_xyxy": [0, 0, 5, 5], "multimask_output": True}, True),
        ({"points": [[1, 1, 1]], "mask_input": "LOGITS"}, False),
    ],
)
def test_from_dict_gives_what_the_http_schema_converts_to(data, multimask):
    """The dict form and ``/v1/segment``'s body give the same decoder prompt and flag."""
    if data.get("mask_input") == "LOGITS":
        data = {**data, "mask_input": encode_logits_base64(_logits())}
    ours = Prompt.from_dict(data)
    assert ours.multimask is multimask
    body = {k: v for k, v in data.items() if k != "multimask_output"}
    (http,), (flag,) = to_prompt_specs([PromptIn.model_validate(body)], 10, 10)
    assert flag is (multimask if "multimask_output" not in data else False)  # the body's flag is per request
    spec = ours.to_spec()
    for name in ("point_coords", "point_labels", "box_xyxy", "mask_input"):
        a, b = getattr(spec, name), getattr(http, name)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype


@pytest.mark.parametrize(
    "data, field, message",
    [
        ({"box_xyxy": [3, 0, 1, 1]}, "prompts[2].box_xyxy", "x1 must be greater than x0"),
        ({"points": []}, "prompts[2].points", "must not be empty"),
        ({"points": [[1, 2, "x"]]}, "prompts[2].points", "point 0: label must be 1, 0, 'fg' or 'bg'"),
        ({"points": [[1, 2, [1]]]}, "prompts[2].points", "point 0: label must be 1, 0, 'fg' or 'bg'"),
        ({"points": [["1", 2, 1]]}, "prompts[2].points", "point 0: x must be a finite number"),
        ({"points": [[1, 2]]}, "prompts[2].points", "point 0 must be [x, y, label]"),
        ({"points": 5}, "prompts[2].points", "points must be a list of [x, y, label]"),
        ({"mask_input": {"base64": "not base64!"}}, "prompts[2].mask_input", "not valid base64"),
        ({"mask_input": {"base64": "", "shape": [64, 64]}}, "prompts[2].mask_input", "shape must be [256, 256]"),
        ({"box": [0, 0, 1, 1]}, "prompts[2]", "unknown keys ['box']"),
    ],
)
def test_from_dict_errors_name_the_field_as_the_http_api_does(data, field, message):
    with pytest.raises(PromptError) as info:
        Prompt.from_dict(data, "prompts[2]")
    assert info.value.field == field and message in info.value.message
    if isinstance(data.get("points", []), list) and ("points" in data or "box_xyxy" in data):
        # the same rule message in a 422 body (a JSON type error is pydantic's own message there)
        with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
            PromptIn.model_validate(data)


def test_mask_input_from_its_wire_form_float16():
    logits = _logits().astype("<f2")
    wire = {"base64": base64.b64encode(logits.tobytes()).decode(), "dtype": "float16"}
    p = Prompt.from_dict({"mask_input": wire})
    assert p.mask_input.dtype == np.float32 and not p.multimask
    np.testing.assert_array_equal(p.mask_input, logits.astype(np.float32))


def test_decoder_prompts_centre_click_and_text():
    assert decoder_prompts([]) == ([], [])
    (click,), flags = decoder_prompts([], 101, 50)
    assert flags == [True] and click.point_coords.tolist() == [[50.5, 25.0]] and click.point_labels.tolist() == [1]
    text = Prompt(text="a red car")
    assert text.is_text and Prompt.from_dict({"text": "a red car"}).text == "a red car"
    with pytest.raises(ValueError, match="text prompt has no decoder prompt"):
        decoder_prompts([Prompt(box_xyxy=[0, 0, 1, 1]), text])
