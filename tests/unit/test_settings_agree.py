"""The pydantic config and request models agree with the settings dataclasses of ``models/`` they are
built from: same fields, defaults and limits, and the same values accepted and rejected at each limit."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass

import annotated_types
import pytest
from pydantic import BaseModel, ValidationError

from models.accel import AccelSettings
from models.amg import AmgSettings
from models.fade_strategies import ExponentialFade, GaussianFade, LinearFade
from models.fader import CropSettings
from models.runtime import PRECISIONS, RUNTIMES, RuntimeSettings
from models.settings import bounded, check_bounds, field_rules
from serve_app.config import AccelArgs, AmgDefaults, EncoderArgs, FaderArgs, ModelStageArgs
from serve_app.ingress.errors import from_validation_error
from serve_app.ingress.schemas import AmgIn, FadeIn, PredictRequest, SegmentRequest
from serve_app.settings import pydantic_fields

STAGE = {"device", "torch_threads"}
#: A model stage's runtime and precision: RuntimeSettings' (test_stage_runtime_and_precision_are_runtime_settings).
RUNTIME = {"runtime", "precision"}
# (pydantic model, dataclasses, optional overrides, fields of the pydantic model's own, dataclass fields left out)
PAIRS = [
    (AmgDefaults, (AmgSettings,), False, set(), set()),
    (AmgIn, (AmgSettings,), True, set(), {"points_per_batch"}),  # app config only (memory, not the answer)
    (FaderArgs, (CropSettings,), False, {"strategy", "params"}, set()),
    (FadeIn, (GaussianFade, LinearFade, ExponentialFade), True, {"strategy"}, set()),
    (AccelArgs, (AccelSettings,), False, set(), {"tensorrt"}),
    (ModelStageArgs, (AccelSettings,), False, STAGE | RUNTIME, {"tensorrt", "precision"}),
    (EncoderArgs, (AccelSettings,), False, STAGE | RUNTIME, {"precision"}),
]
IDS = [p[0].__name__ for p in PAIRS]
_PYDANTIC_BOUND = {annotated_types.Ge: "ge", annotated_types.Gt: "gt", annotated_types.Le: "le", annotated_types.Lt: "lt", annotated_types.MinLen: "min_length"}


def _dataclass_fields(classes, left_out) -> dict[str, dataclasses.Field]:
    out = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.init and f.name not in left_out:
                out.setdefault(f.name, f)
    return out


def _rules(classes) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for cls in classes:
        out.update(field_rules(cls))
    return out


def _pydantic_rules(info) -> dict:
    rules = {}
    for m in info.metadata:
        key = _PYDANTIC_BOUND.get(type(m))
        if key is not None:
            rules[key] = getattr(m, key)
    literals = [a for a in _flatten(info.annotation) if typing.get_origin(a) is typing.Literal]
    if literals:
        rules["choices"] = tuple(v for lit in literals for v in typing.get_args(lit))
    return rules


def _flatten(annotation):
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [x for a in typing.get_args(annotation) for x in _flatten(a)]
    return [annotation]


@pytest.mark.parametrize(("model", "classes", "optional", "own", "left_out"), PAIRS, ids=IDS)
def test_same_fields_defaults_and_limits(model, classes, optional, own, left_out):
    fields = _dataclass_fields(classes, left_out)
    assert set(model.model_fields) == set(fields) | own
    rules = _rules(classes)
    for name, f in fields.items():
        info = model.model_fields[name]
        assert info.default == (None if optional else f.default), name
        expected = dict(rules.get(name, {}))
        if "choices" in expected:
            expected["choices"] = tuple(c for c in expected["choices"] if c is not None)
        assert _pydantic_rules(info) == expected, name
        if "choices" in rules.get(name, {}):
            assert (None in rules[name]["choices"]) == (type(None) in _flatten(info.annotation)), name


def _probes(rules: dict, integer: bool) -> list[tuple[object, bool]]:
    """(value, allowed) pairs at each limit of a rule: the limit itself and one step past it."""
    step = 1 if integer else 1e-3
    out = []
    if "ge" in rules:
        out += [(rules["ge"], True), (rules["ge"] - step, False)]
    if "gt" in rules:
        out += [(rules["gt"], False), (rules["gt"] + step, True)]
    if "le" in rules:
        out += [(rules["le"], True), (rules["le"] + step, False)]
    if "lt" in rules:
        out += [(rules["lt"], False), (rules["lt"] - step, True)]
    if "choices" in rules:
        out += [(c, True) for c in rules["choices"]] + [("no-such-choice", False)]
    if "min_length" in rules:
        out += [("", False), ("x" * rules["min_length"], True)]
    return out


@pytest.mark.parametrize(("model", "classes", "optional", "own", "left_out"), PAIRS, ids=IDS)
def test_same_values_accepted_and_rejected(model, classes, optional, own, left_out):
    fields = _dataclass_fields(classes, left_out)
    for name in fields:
        for cls in classes:
            if name not in field_rules(cls):
                continue
            integer = typing.get_type_hints(cls)[name] is int
            for value, allowed in _probes(field_rules(cls)[name], integer):
                try:
                    cls(**{name: value})
                    dataclass_ok = True
                except ValueError:
                    dataclass_ok = False
                try:
                    model.model_validate({name: value})
                    pydantic_ok = True
                except ValidationError:
                    pydantic_ok = False
                assert dataclass_ok == pydantic_ok == allowed, (cls.__name__, name, value)


def test_amg_points_per_side_limit_is_128_everywhere():
    assert AmgSettings(points_per_side=128).points_per_side == 128
    assert AmgDefaults(points_per_side=128).points_per_side == 128
    assert AmgIn(points_per_side=128).points_per_side == 128
    for build in (lambda: AmgSettings(points_per_side=129), lambda: AmgDefaults(points_per_side=129), lambda: AmgIn(points_per_side=129)):
        with pytest.raises(ValueError, match="128"):
            build()


@pytest.mark.parametrize(
    ("request_model", "body", "field", "rule"),
    [
        (SegmentRequest, {"amg": {"points_per_side": 129}}, "amg.points_per_side", "less than or equal to 128"),
        (PredictRequest, {"amg": {"points_per_side": 0}}, "amg.points_per_side", "greater than or equal to 1"),
        (PredictRequest, {"amg": {"box_nms_thresh": 1.5}}, "amg.box_nms_thresh", "less than or equal to 1"),
        (PredictRequest, {"fade": {"sigma_px": 0}}, "fade.sigma_px", "greater than 0"),
        (SegmentRequest, {"fade": {"strategy": "linear", "min_fade": -0.5}}, "fade.min_fade", "greater than or equal to 0"),
    ],
)
def test_http_error_names_field_and_rule(request_model, body, field, rule):
    with pytest.raises(ValidationError) as info:
        request_model.model_validate(body)
    err = from_validation_error(info.value)
    assert (err.status, err.code, err.field) == (422, "invalid_request", field)
    assert rule in err.message and err.message.startswith(f"{field}: ")


def test_dataclass_message_names_field_and_rule():
    with pytest.raises(ValueError, match=r"^points_per_side must be an integer in 1\.\.128; got 0$"):
        AmgSettings(points_per_side=0)
    with pytest.raises(ValueError, match=r"^stability_score_offset must be > 0; got 0$"):
        AmgSettings(stability_score_offset=0)
    with pytest.raises(ValueError, match=r"^precision must be one of \('fp32', 'bf16'\); got 'fp16'$"):
        AccelSettings(precision="fp16")
    with pytest.raises(ValueError, match="points_per_batch must be an integer"):
        AmgSettings(points_per_batch=True)


def test_a_field_declared_twice_differently_is_refused():
    @dataclass(frozen=True)
    class Narrow:
        min_fade: float = bounded(0.0, ge=0, le=0.5)

        def __post_init__(self) -> None:
            check_bounds(self)

    with pytest.raises(ValueError, match="min_fade is declared differently"):
        pydantic_fields(GaussianFade, Narrow)


def test_accel_args_hand_over_every_accel_setting():
    assert EncoderArgs(tensorrt=True, precision="bf16").accel() == dataclasses.asdict(AccelSettings(tensorrt=True, precision="bf16"))
    assert ModelStageArgs().accel() == dataclasses.asdict(AccelSettings())
    assert issubclass(FaderArgs, BaseModel) and FaderArgs().model_dump()["output_size"] == CropSettings().output_size


@pytest.mark.parametrize("model", [ModelStageArgs, EncoderArgs])
def test_stage_runtime_and_precision_are_runtime_settings(model):
    """``runtime`` and ``precision`` take RuntimeSettings' values and defaults; fp16 is refused on torch (which
    runs fp32 or bf16 autocast), naming the precision, and accepted on the runtimes that have it."""
    for name in RUNTIME:
        assert model.model_fields[name].default == getattr(RuntimeSettings(), name)
    assert _pydantic_rules(model.model_fields["runtime"])["choices"] == tuple(RUNTIMES)
    assert _pydantic_rules(model.model_fields["precision"])["choices"] == PRECISIONS
    with pytest.raises(ValidationError, match="precision 'fp16' needs runtime openvino or tensorrt"):
        model(precision="fp16")
    with pytest.raises(ValidationError, match="runtime"):
        model(runtime="tvm")
    stage = model(runtime="openvino", precision="fp16")
    assert stage.runtime_settings("/x") == {"runtime": "openvino", "precision": "fp16", "export_dir": "/x"}
    assert stage.accel()["precision"] == "fp32"  # torch's share: what it runs if openvino falls back
    assert model(precision="bf16").accel()["precision"] == "bf16"  # on torch, today's autocast
