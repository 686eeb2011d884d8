"""models.fade_strategies, models.fader and deployments.fader: distances, fades, crops and the Fader logic, exact on synthetic masks."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image

import models.fade_strategies as fade_strategies
from deployments.fader import FadeJob, Fader
from models.fade_strategies import (
    ExponentialFade,
    FadeStrategy,
    GaussianFade,
    IdentityFade,
    LinearFade,
    list_fade_strategies,
    make_fade_strategy,
    register_fade_strategy,
)
from models.fader import CropSettings, crop_box_xyxy, distance_to_mask, fade_and_crop, fade_and_crop_batch

SEED = 1234
BUILTINS = ["gaussian", "linear", "exponential", "identity"]


def _pixel_mask(h: int = 30, w: int = 30, y: int = 10, x: int = 10) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[y, x] = True
    return mask


def _rectangle(h: int = 40, w: int = 60) -> np.ndarray:
    """Rows 10..19, columns 30..49: tight box [30, 10, 50, 20], 20 wide and 10 high."""
    mask = np.zeros((h, w), bool)
    mask[10:20, 30:50] = True
    return mask


def _left_column(h: int = 4, w: int = 30) -> np.ndarray:
    """Mask of column 0, so that the distance of column x is exactly x."""
    mask = np.zeros((h, w), bool)
    mask[:, 0] = True
    return mask


def _random_image(h: int, w: int, seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _faded(strategy: FadeStrategy, mask: np.ndarray, value: float = 100.0) -> np.ndarray:
    """Channel 0 of a uniform image of ``value`` faded by ``strategy``: ``value * factor``."""
    image = np.full((*mask.shape, 3), value, np.float32)
    out = strategy.apply(image, mask, distance_to_mask(mask))
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    return out[..., 0]


# --- distance_to_mask ---------------------------------------------------------------------------


def test_distance_single_pixel_exact():
    d = distance_to_mask(_pixel_mask())
    assert d.shape == (30, 30) and d.dtype == np.float32
    assert d[10, 10] == 0.0
    assert d[13, 14] == 5.0  # (dy, dx) = (3, 4)
    assert d[10, 0] == 10.0
    assert d[0, 0] == np.float32(math.hypot(10, 10))
    assert d[29, 29] == np.float32(math.hypot(19, 19))


def test_distance_zero_inside_and_exact_outside_rectangle():
    mask = _rectangle()
    d = distance_to_mask(mask)
    assert np.all(d[mask] == 0)
    assert np.all(d[~mask] >= 1)
    assert d[15, 20] == 10.0  # 10 columns left of column 30
    assert d[30, 40] == 11.0  # 11 rows below row 19
    assert d[0, 0] == np.float32(math.hypot(30, 10))  # nearest mask pixel is the corner (10, 30)


def test_distance_empty_and_bad_masks_raise():
    with pytest.raises(ValueError, match="mask is empty"):
        distance_to_mask(np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match=r"mask must be \(H, W\) bool"):
        distance_to_mask(np.ones((5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"mask must be \(H, W\) bool"):
        distance_to_mask(np.ones((2, 5, 5), bool))


# --- strategies ------------------------------------------------------------------------------------


def test_gaussian_formula_and_floor():
    out = _faded(GaussianFade(sigma_px=10.0), _pixel_mask())
    assert out[10, 10] == 100.0
    np.testing.assert_allclose(out[13, 14], 100.0 * math.exp(-((5.0 / 10.0) ** 2)), rtol=1e-6)
    np.testing.assert_allclose(out[10, 0], 100.0 * math.exp(-1.0), rtol=1e-6)  # d = sigma: 1/e
    floored = _faded(GaussianFade(sigma_px=5.0, min_fade=0.1), _pixel_mask())
    np.testing.assert_allclose(floored[29, 29], 10.0, rtol=1e-6)  # exp(-(26.9 / 5)^2) << 0.1
    np.testing.assert_allclose(floored[13, 14], 100.0 * math.exp(-1.0), rtol=1e-6)  # above the floor


def test_linear_formula_cutoff_and_floor():
    out = _faded(LinearFade(max_distance_px=10.0), _left_column())
    np.testing.assert_allclose(out[0, :11], 100.0 * (1 - np.arange(11) / 10.0), rtol=1e-6, atol=1e-5)
    assert out[0, 10] == 0.0 and np.all(out[:, 10:] == 0.0)  # at and beyond max distance
    floored = _faded(LinearFade(max_distance_px=10.0, min_fade=0.2), _left_column())
    np.testing.assert_allclose(floored[0, 5], 50.0, rtol=1e-6)
    np.testing.assert_allclose(floored[0, 8:], 20.0, rtol=1e-6)  # 1 - 0.8 = 0.2 reaches the floor


def test_exponential_formula_cutoff_and_floor():
    out = _faded(ExponentialFade(decay=0.1, max_distance_px=10.0), _left_column())
    np.testing.assert_allclose(out[0, :10], 100.0 * np.exp(-0.1 * np.arange(10)), rtol=1e-6)
    assert np.all(out[:, 10:] == 0.0)  # d >= max_distance_px -> min_fade
    floored = _faded(ExponentialFade(decay=0.1, max_distance_px=10.0, min_fade=0.5), _left_column())
    np.testing.assert_allclose(floored[0, 5], 100.0 * math.exp(-0.5), rtol=1e-6)  # 0.607 > 0.5
    np.testing.assert_allclose(floored[0, 9], 50.0, rtol=1e-6)  # exp(-0.9) = 0.41 < 0.5
    np.testing.assert_allclose(floored[0, 10:], 50.0, rtol=1e-6)


def test_identity_leaves_image_unchanged():
    mask = _rectangle()
    image = _random_image(40, 60).astype(np.float32)
    out = IdentityFade().apply(image, mask, distance_to_mask(mask))
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtins_are_one_inside_the_mask_and_in_range(name):
    mask = _rectangle()
    out = _faded(make_fade_strategy(name), mask)
    assert np.all(out[mask] == 100.0)
    assert np.all((out >= 0) & (out <= 100.0))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: GaussianFade(sigma_px=0.0), "sigma_px must be > 0"),
        (lambda: GaussianFade(sigma_px=-1.0), "sigma_px must be > 0"),
        (lambda: GaussianFade(sigma_px=math.inf), "sigma_px must be > 0"),
        (lambda: GaussianFade(sigma_px=math.nan), "sigma_px must be > 0"),
        (lambda: GaussianFade(sigma_px="50"), "sigma_px must be > 0"),
        (lambda: GaussianFade(sigma_px=True), "sigma_px must be > 0"),
        (lambda: GaussianFade(min_fade=-0.1), r"min_fade must be in \[0, 1\]"),
        (lambda: GaussianFade(min_fade=1.5), r"min_fade must be in \[0, 1\]"),
        (lambda: GaussianFade(min_fade=math.nan), r"min_fade must be in \[0, 1\]"),
        (lambda: LinearFade(max_distance_px=0), "max_distance_px must be > 0"),
        (lambda: LinearFade(min_fade=2.0), r"min_fade must be in \[0, 1\]"),
        (lambda: ExponentialFade(decay=0.0), "decay must be > 0"),
        (lambda: ExponentialFade(decay=-0.05), "decay must be > 0"),
        (lambda: ExponentialFade(max_distance_px=-1.0), "max_distance_px must be > 0"),
        (lambda: ExponentialFade(min_fade=-1e-3), r"min_fade must be in \[0, 1\]"),
        (lambda: CropSettings(context_margin=-0.1), r"context_margin must be in \[0, 2\]"),
        (lambda: CropSettings(context_margin=math.inf), r"context_margin must be in \[0, 2\]"),
        (lambda: CropSettings(context_margin=2.5), r"context_margin must be in \[0, 2\]"),
        (lambda: CropSettings(output_size=15), r"output_size must be an integer in 16\.\.1024"),
        (lambda: CropSettings(output_size=224.0), r"output_size must be an integer in 16\.\.1024"),
        (lambda: CropSettings(output_size=True), r"output_size must be an integer in 16\.\.1024"),
        (lambda: CropSettings(output_size=1025), r"output_size must be an integer in 16\.\.1024"),
    ],
)
def test_settings_validation(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_settings_boundaries_accepted():
    assert GaussianFade(min_fade=0.0).min_fade == 0.0
    assert GaussianFade(min_fade=1).min_fade == 1
    assert CropSettings(context_margin=0, output_size=16).output_size == 16
    assert CropSettings(output_size=np.int64(32)).output_size == 32


# --- registry --------------------------------------------------------------------------------------


@pytest.fixture
def private_registry(monkeypatch):
    """A copy of the registry for the test, so that registrations do not leak into other tests."""
    monkeypatch.setattr(fade_strategies, "_FADE_STRATEGIES", dict(fade_strategies._FADE_STRATEGIES))


@dataclass(frozen=True)
class _GreyOutside:
    """Test strategy: pixels outside the mask become ``level``."""

    name: str = field(default="grey_outside", init=False)
    level: float = 128.0

    def __post_init__(self) -> None:
        if not 0 <= self.level <= 255:
            raise ValueError("level must be in [0, 255]")

    def apply(self, image, mask, distance_map):
        return np.where(mask[..., None], image, np.float32(self.level)).astype(np.float32)


def test_builtins_listed_and_built():
    assert list_fade_strategies()[:4] == BUILTINS
    for name, cls in zip(BUILTINS, [GaussianFade, LinearFade, ExponentialFade, IdentityFade]):
        strategy = make_fade_strategy(name)
        assert type(strategy) is cls and strategy.name == name
        assert isinstance(strategy, FadeStrategy)
    assert make_fade_strategy("gaussian", sigma_px=30.0, min_fade=0.1) == GaussianFade(30.0, 0.1)


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError, match="unknown fade strategy 'blur'") as info:
        make_fade_strategy("blur")
    for name in BUILTINS:
        assert name in str(info.value)


def test_unknown_parameter_named():
    with pytest.raises(ValueError) as info:
        make_fade_strategy("gaussian", foo=1, sigma_px=3.0)
    assert str(info.value) == "unknown parameter(s) for 'gaussian': foo; allowed: sigma_px, min_fade"
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) for 'gaussian': name"):
        make_fade_strategy("gaussian", name="linear")  # the name is not a parameter
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) for 'identity': sigma_px; allowed: \(none\)"):
        make_fade_strategy("identity", sigma_px=3.0)


def test_invalid_parameter_value_through_registry():
    with pytest.raises(ValueError, match="sigma_px must be > 0"):
        make_fade_strategy("gaussian", sigma_px=-5.0)
    with pytest.raises(ValueError, match="decay must be > 0"):
        make_fade_strategy("exponential", decay=0)


def test_user_strategy_registered_and_used(private_registry):
    register_fade_strategy("grey_outside", _GreyOutside)
    assert list_fade_strategies() == [*BUILTINS, "grey_outside"]
    strategy = make_fade_strategy("grey_outside", level=50.0)
    assert strategy == _GreyOutside(level=50.0)
    image = np.full((40, 60, 3), 200, np.uint8)
    crop = fade_and_crop(image, _rectangle(), strategy, CropSettings(context_margin=0.5, output_size=40))
    # window [20, -5, 60, 35): rows 5..14 of the crop are image rows 0..9 (outside), 15..24 the mask rows
    assert np.all(crop[:5] == 0)  # above the image: zero padding
    assert np.all(crop[5:15] == 50)
    assert np.all(crop[15:25, 10:30] == 200) and np.all(crop[15:25, :10] == 50)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) for 'grey_outside': sigma_px; allowed: level"):
        make_fade_strategy("grey_outside", sigma_px=1.0)
    with pytest.raises(ValueError, match="level must be in"):
        make_fade_strategy("grey_outside", level=300.0)


def test_duplicate_and_bad_registrations_rejected(private_registry):
    register_fade_strategy("grey_outside", _GreyOutside)
    with pytest.raises(ValueError, match="'grey_outside' is already registered"):
        register_fade_strategy("grey_outside", _GreyOutside)
    with pytest.raises(ValueError, match="'gaussian' is already registered"):
        register_fade_strategy("gaussian", _GreyOutside)
    with pytest.raises(ValueError, match="non-empty string"):
        register_fade_strategy("", _GreyOutside)
    with pytest.raises(ValueError, match="must be callable"):
        register_fade_strategy("nothing", None)
    assert make_fade_strategy("gaussian") == GaussianFade()  # the built-in is untouched


def test_factory_must_return_a_strategy(private_registry):
    register_fade_strategy("broken", lambda: "not a strategy")
    with pytest.raises(ValueError, match="not a FadeStrategy"):
        make_fade_strategy("broken")


def test_registrations_do_not_leak():
    assert "grey_outside" not in list_fade_strategies()


# --- crop window -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("margin", "expected"),
    [
        (0.0, (30, 5, 50, 25)),  # side 20, centred on the 20 x 10 box
        (0.2, (26, 1, 54, 29)),  # side ceil(20 * 1.4) = 28
        (0.225, (25, 0, 54, 29)),  # side 29: the odd pixel goes left and up
        (0.5, (20, -5, 60, 35)),  # side 40, leaves the image at the top
    ],
)
def test_crop_box_exact_on_rectangle(margin, expected):
    assert crop_box_xyxy(_rectangle(), margin) == expected
    assert all(type(v) is int for v in crop_box_xyxy(_rectangle(), margin))


def test_crop_box_float_rounding_and_tiny_masks():
    mask = np.zeros((60, 60), bool)
    mask[5:55, 5:55] = True  # 50 * 1.1 = 55.00000000000001 in floating point
    x0, y0, x1, y1 = crop_box_xyxy(mask, 0.05)
    assert x1 - x0 == y1 - y0 == 55
    assert crop_box_xyxy(_pixel_mask(), 0.2) == (9, 9, 11, 11)  # side ceil(1.4) = 2, odd pixel left and up
    assert crop_box_xyxy(_pixel_mask(), 0.0) == (10, 10, 11, 11)
    with pytest.raises(ValueError, match="mask is empty"):
        crop_box_xyxy(np.zeros((5, 5), bool), 0.2)
    with pytest.raises(ValueError, match=r"context_margin must be in \[0, 2\]"):
        crop_box_xyxy(_rectangle(), -0.5)


# --- fade_and_crop -----------------------------------------------------------------------------------


def _reference_fade_and_crop(image, mask, strategy, crop):
    """The definition, on the whole image: fade, cut the window with zero padding, round, resize."""
    faded = strategy.apply(image.astype(np.float32), mask, distance_to_mask(mask))
    faded = np.clip(np.rint(faded), 0, 255).astype(np.uint8)
    x0, y0, x1, y1 = crop_box_xyxy(mask, crop.context_margin)
    h, w = mask.shape
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    padded = np.pad(faded, ((pad, pad), (pad, pad), (0, 0)))
    window = padded[y0 + pad : y1 + pad, x0 + pad : x1 + pad]
    size = crop.output_size
    return np.asarray(Image.fromarray(window).resize((size, size), Image.Resampling.BICUBIC))


def test_output_shape_dtype():
    out = fade_and_crop(_random_image(40, 60), _rectangle(), GaussianFade())
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    out = fade_and_crop(_random_image(40, 60), _pixel_mask(40, 60), LinearFade(), CropSettings(output_size=16))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_identity_crop_is_the_image_window():
    image = _random_image(40, 60)
    out = fade_and_crop(image, _rectangle(), IdentityFade(), CropSettings(context_margin=0.2, output_size=28))
    np.testing.assert_array_equal(out, image[1:29, 26:54])  # window (26, 1, 54, 29), no resize


def test_zero_padding_outside_the_image():
    image = np.full((40, 60, 3), 200, np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[0:10, 0:20] = True
    # side 40, window (-10, -15, 30, 25): 15 rows above and 10 columns left of the image
    assert crop_box_xyxy(mask, 0.5) == (-10, -15, 30, 25)
    out = fade_and_crop(image, mask, IdentityFade(), CropSettings(context_margin=0.5, output_size=40))
    assert np.all(out[:15] == 0) and np.all(out[:, :10] == 0)
    assert np.all(out[15:, 10:] == 200)
    resized = fade_and_crop(image, mask, IdentityFade(), CropSettings(context_margin=0.5, output_size=224))
    assert np.all(resized[0, 0] == 0) and np.all(resized[-1, -1] == 200)


def test_centre_pixel_inside_mask_keeps_value():
    image = np.full((40, 60, 3), 137, np.uint8)
    for name in BUILTINS:
        out = fade_and_crop(image, _rectangle(), make_fade_strategy(name))
        assert np.all(out[112, 112] == 137), name
    faded = fade_and_crop(image, _rectangle(), GaussianFade(sigma_px=2.0))
    assert np.all(faded[0, 0] < 137)  # the corner is outside the mask: faded


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("margin", [0.0, 0.2, 0.5, 2.0])
def test_window_fade_equals_whole_image_fade(name, margin):
    """The fade is computed on the window only; for the built-ins that is the whole-image result exactly."""
    image = _random_image(40, 60, seed=7)
    mask = np.zeros((40, 60), bool)
    mask[3:17, 40:58] = True
    mask[8:12, 30:45] = True
    crop = CropSettings(context_margin=margin, output_size=64)
    strategy = make_fade_strategy(name)
    np.testing.assert_array_equal(
        fade_and_crop(image, mask, strategy, crop), _reference_fade_and_crop(image, mask, strategy, crop)
    )


@pytest.mark.parametrize(
    ("image", "mask", "match"),
    [
        (np.zeros((40, 60, 3), np.float32), _rectangle(), r"image must be \(H, W, 3\) uint8"),
        (np.zeros((40, 60, 4), np.uint8), _rectangle(), r"image must be \(H, W, 3\) uint8"),
        (np.zeros((40, 60), np.uint8), _rectangle(), r"image must be \(H, W, 3\) uint8"),
        (np.zeros((40, 60, 3), np.uint8), _rectangle(41, 60), r"does not match the image's \(H, W\)"),
        (np.zeros((40, 60, 3), np.uint8), _rectangle().astype(np.uint8), r"mask must be \(H, W\) bool"),
        (np.zeros((40, 60, 3), np.uint8), np.zeros((40, 60), bool), "mask is empty"),
    ],
)
def test_fade_and_crop_validation(image, mask, match):
    with pytest.raises(ValueError, match=match):
        fade_and_crop(image, mask, GaussianFade())


def test_strategy_with_wrong_output_shape_rejected():
    @dataclass(frozen=True)
    class Shrinks:
        name: str = "shrinks"

        def apply(self, image, mask, distance_map):
            return image[1:]

    with pytest.raises(ValueError, match="fade strategy 'shrinks' returned"):
        fade_and_crop(_random_image(40, 60), _rectangle(), Shrinks())


def test_batch_equals_per_item_calls():
    image_a = _random_image(40, 60, seed=1)
    image_b = _random_image(32, 48, seed=2)
    mask_b = np.zeros((32, 48), bool)
    mask_b[20:30, 2:9] = True
    mask_a2 = _pixel_mask(40, 60, 39, 59)
    images = [image_a, image_a, image_b, image_a, image_a]
    masks = [_rectangle(), mask_a2, mask_b, _rectangle(), mask_a2]  # the last repeats pair 1 (same objects)
    masks[4] = masks[1]
    strategy = ExponentialFade(decay=0.1, min_fade=0.2)
    crop = CropSettings(context_margin=0.3, output_size=48)
    batch = fade_and_crop_batch(images, masks, strategy, crop)
    assert len(batch) == 5
    for image, mask, got in zip(images, masks, batch):
        np.testing.assert_array_equal(got, fade_and_crop(image, mask, strategy, crop))
    assert batch[4] is not batch[1]  # a repeated pair is computed once but returned as its own array
    assert fade_and_crop_batch([], [], strategy, crop) == []


def test_batch_validation_names_the_item():
    image = _random_image(40, 60)
    with pytest.raises(ValueError, match="same length"):
        fade_and_crop_batch([image], [], GaussianFade())
    with pytest.raises(ValueError, match=r"masks\[1\] mask is empty"):
        fade_and_crop_batch([image, image], [_rectangle(), np.zeros((40, 60), bool)], GaussianFade())
    with pytest.raises(ValueError, match=r"images\[1\] image must be"):
        fade_and_crop_batch([image, image[..., :2]], [_rectangle(), _rectangle()], GaussianFade())


# --- Fader deployment logic (no Ray cluster: the undecorated class) ---------------------------------

FaderClass = Fader.func_or_class


def test_fader_is_a_deployment_of_the_plain_class():
    assert Fader.name == "Fader"
    assert isinstance(FaderClass, type) and FaderClass.__name__ == "Fader"


def test_fader_constructor_validates():
    with pytest.raises(ValueError, match="unknown fade strategy 'blur'"):
        FaderClass(default_strategy="blur")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) for 'linear': sigma_px"):
        FaderClass(default_strategy="linear", default_params={"sigma_px": 3.0})
    with pytest.raises(ValueError, match=r"output_size must be an integer in 16\.\.1024"):
        FaderClass(crop={"output_size": 8})
    with pytest.raises(ValueError, match="bad crop settings"):
        FaderClass(crop={"size": 64})
    obj = FaderClass(default_strategy="linear", default_params={"max_distance_px": 20.0}, crop={"output_size": 32})
    assert obj.crop_settings() == CropSettings(output_size=32)
    assert obj.stats() == {"jobs": 0, "crops": 0, "batches": 0, "busy_s": 0.0, "admission": {"in_flight": 0, "service_s": None, "parallel": 1, "refused": 0}}


def test_fader_reconfigure_sets_batching():
    obj = FaderClass()
    try:
        obj.reconfigure({"max_batch_size": 4, "batch_wait_timeout_s": 0.01})
        assert obj.fade._get_max_batch_size() == 4
        assert obj.fade._get_batch_wait_timeout_s() == 0.01
        with pytest.raises(ValueError, match="max_batch_size must be an integer greater than 0"):
            obj.reconfigure({"max_batch_size": 0})
        with pytest.raises(ValueError, match="unknown user_config keys"):
            obj.reconfigure({"batch_size": 4})
    finally:
        obj.reconfigure({"max_batch_size": 16, "batch_wait_timeout_s": 0.002})


def test_fade_job_validation():
    image = _random_image(40, 60)
    job = FadeJob(image, [_rectangle()])
    assert isinstance(job.masks, tuple) and job.built is None
    stacked = FadeJob(image, np.stack([_rectangle(), _pixel_mask(40, 60)]))
    assert len(stacked.masks) == 2 and stacked.masks[1].shape == (40, 60)
    assert FadeJob(image, (), strategy="linear").built == LinearFade()
    with pytest.raises(ValueError, match=r"image must be \(H, W, 3\) uint8"):
        FadeJob(image[..., 0], (_rectangle(),))
    with pytest.raises(ValueError, match=r"masks\[1\] must be \(H, W\) bool"):
        FadeJob(image, (_rectangle(), _rectangle(30, 60)))
    with pytest.raises(ValueError, match=r"masks\[0\] is empty"):
        FadeJob(image, (np.zeros((40, 60), bool),))
    with pytest.raises(ValueError, match="params need a strategy name"):
        FadeJob(image, (_rectangle(),), params={"sigma_px": 3.0})
    with pytest.raises(ValueError, match="unknown fade strategy 'blur'"):
        FadeJob(image, (_rectangle(),), strategy="blur")
    with pytest.raises(ValueError, match="sigma_px must be > 0"):
        FadeJob(image, (_rectangle(),), strategy="gaussian", params={"sigma_px": 0})


def test_fader_strategy_per_job():
    obj = FaderClass(default_strategy="gaussian", default_params={"sigma_px": 7.0})
    image = _random_image(40, 60)
    masks = (_rectangle(),)
    assert obj.strategy_for(FadeJob(image, masks)) == GaussianFade(sigma_px=7.0)
    assert obj.strategy_for(FadeJob(image, masks, strategy="gaussian")) == GaussianFade(sigma_px=7.0)
    assert obj.strategy_for(FadeJob(image, masks, "gaussian", {"min_fade": 0.5})) == GaussianFade(min_fade=0.5)
    assert obj.strategy_for(FadeJob(image, masks, strategy="linear")) == LinearFade()
    assert obj.strategy_for(FadeJob(image, masks, "exponential", {"decay": 0.2})) == ExponentialFade(decay=0.2)


def test_fader_batch_body_one_crop_per_mask():
    crop = CropSettings(context_margin=0.1, output_size=32)
    obj = FaderClass(
        default_strategy="gaussian", default_params={"sigma_px": 7.0}, crop={"output_size": 32, "context_margin": 0.1}
    )
    image_a, image_b = _random_image(40, 60, seed=3), _random_image(40, 60, seed=4)
    pixel = _pixel_mask(40, 60, 5, 5)
    jobs = [
        FadeJob(image_a, (_rectangle(), pixel)),
        FadeJob(image_b, (pixel,), strategy="identity"),
        FadeJob(image_a, ()),
        FadeJob(image_b, (_rectangle(), _rectangle(), pixel), "linear", {"max_distance_px": 5.0}),
    ]
    expected_strategies = [GaussianFade(sigma_px=7.0), IdentityFade(), None, LinearFade(max_distance_px=5.0)]
    # The body that @serve.batch runs on a list of jobs, run here without a Serve replica.
    results = asyncio.run(FaderClass.fade.__wrapped__(obj, jobs))
    assert [len(r) for r in results] == [2, 1, 0, 3]
    for job, strategy, crops in zip(jobs, expected_strategies, results):
        for mask, got in zip(job.masks, crops):
            assert got.shape == (32, 32, 3) and got.dtype == np.uint8
            np.testing.assert_array_equal(got, fade_and_crop(job.image, mask, strategy, crop))
    stats = obj.stats()
    assert (stats["jobs"], stats["crops"], stats["batches"]) == (4, 6, 1)
    assert stats["busy_s"] > 0
    assert [len(r) for r in obj.fade_jobs(jobs[:2])] == [2, 1]  # the synchronous helper counts nothing
    assert obj.stats()["jobs"] == 4
