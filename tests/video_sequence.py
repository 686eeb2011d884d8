"""The correction sequence the video-session parity tests run on sam2's ``SAM2VideoPredictor`` and on
ours (in process and over HTTP): a box on frame 0, propagate, a second object on a later frame, a
correction click, propagate both ways from there, remove the first object, propagate again (both ways from the later frame).

Each step's answer is normalised to ``{frame_index: (obj_ids, (O, H, W) bool masks)}``.
"""

from __future__ import annotations

import numpy as np

from tests.conftest import BEDROOM_BOX, BEDROOM_POINT, mask_iou

#: Frames of the bedroom clip the sequence runs on (each tracked frame costs one image encoding).
NUM_FRAMES = 4
LATER = 2  # the frame of the second object and of the correction
CORRECTION = [350, 200]  # a foreground click for object 1 on frame LATER, inside its box

def sequence(later: int = LATER) -> list[tuple[str, dict]]:
    """The steps, with the second object and the correction on frame ``later``."""
    return [
        ("prompt", {"frame_index": 0, "obj_id": 1, "box_xyxy": BEDROOM_BOX}),
        ("propagate", {"direction": "forward"}),
        ("prompt", {"frame_index": later, "obj_id": 2, "points": [BEDROOM_POINT], "point_labels": [1]}),
        ("prompt", {"frame_index": later, "obj_id": 1, "points": [CORRECTION], "point_labels": [1], "clear_old_points": False}),
        ("propagate", {"start_frame": later, "direction": "both"}),
        ("remove", {"obj_id": 1}),
        # from `later`: sam2 cannot track an object forward from a frame before its first prompt (on CPU
        # its bfloat16 memories then meet float32 weights), and after the removal object 2's is `later`
        ("propagate", {"start_frame": later, "direction": "both"}),
    ]


STEPS = sequence()


def run_reference(predictor, state, steps=STEPS) -> list[dict]:
    """``steps`` on sam2's own predictor and ``init_state``; one answer per step."""
    out = []
    for kind, kw in steps:
        if kind == "prompt":
            f, ids, logits = predictor.add_new_points_or_box(
                state,
                frame_idx=kw["frame_index"],
                obj_id=kw["obj_id"],
                box=None if "box_xyxy" not in kw else np.array(kw["box_xyxy"], np.float32),
                points=None if "points" not in kw else np.array(kw["points"], np.float32),
                labels=None if "points" not in kw else np.array(kw["point_labels"], np.int32),
                clear_old_points=kw.get("clear_old_points", True),
            )
            out.append({f: (list(ids), (logits[:, 0] > 0).numpy())})
        elif kind == "propagate":
            frames: dict = {}
            for reverse in {"forward": (False,), "backward": (True,), "both": (False, True)}[kw["direction"]]:
                for f, ids, logits in predictor.propagate_in_video(state, start_frame_idx=kw.get("start_frame"), reverse=reverse):
                    frames.setdefault(f, (list(ids), (logits[:, 0] > 0).numpy()))
            out.append(frames)
        else:
            ids, updated = predictor.remove_object(state, kw["obj_id"], strict=True)
            out.append({f: (list(ids), (m[:, 0] > 0).numpy()) for f, m in updated})
    return out


def assert_same(ours: list[dict], reference: list[dict], steps=STEPS, iou_min: float = 0.999) -> None:
    """Per step, frame and object: the same frames and objects and IoU >= ``iou_min``. Every propagated
    mask and the prompted object's mask are non-empty, and objects' masks differ from each other.

    A prompt's answer shows the other objects as sam2's consolidation does: an object whose output on
    that frame is of the other kind (conditioning or not) is empty there, on both sides.
    """
    assert len(ours) == len(reference) == len(steps)
    for step, (a, b) in enumerate(zip(ours, reference)):
        kind, kw = steps[step]
        assert sorted(a) == sorted(b), f"step {step} {kind}: frames {sorted(a)} vs {sorted(b)}"
        for f in b:
            (ids_a, ma), (ids_b, mb) = a[f], b[f]
            assert ids_a == ids_b, f"step {step} frame {f}: objects {ids_a} vs {ids_b}"
            assert ma.shape == mb.shape
            for k, obj in enumerate(ids_b):
                if kind == "propagate" or (kind == "prompt" and obj == kw["obj_id"]):
                    assert ma[k].any(), f"step {step} frame {f} object {obj}: empty mask (a vacuous comparison)"
                iou = mask_iou(ma[k], mb[k])
                assert iou >= iou_min, f"step {step} frame {f} object {obj}: IoU {iou:.5f}"
            if len(ids_b) == 2 and ma[0].any() and ma[1].any():
                assert not np.array_equal(ma[0], ma[1]), f"step {step} frame {f}: both objects have one mask"
