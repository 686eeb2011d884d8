"""The correction sequence the video-session parity tests run on sam2's ``SAM2VideoPredictor`` and on
ours (in process and over HTTP): a box on frame 0, propagate, a second object on a later frame, a
correction click for the first object on that (already tracked) frame, propagate both ways from there,
remove the first object, propagate both ways from the frame before the later one.

sam2 is built with ``++model.add_all_frames_to_correct_as_cond=true`` (:data:`CORRECT_AS_COND`), as
:func:`models.sam2_video.build_sam2_video_model` builds ours: the correction is then a conditioning frame,
which later propagations return as the click answered it.

Each step's answer is normalised to ``{frame_index: (obj_ids, (O, H, W) bool masks)}``; for a propagation,
a frame's last result (with ``both`` sam2 tracks the start frame twice and keeps the second).
"""

from __future__ import annotations

import numpy as np

from tests.conftest import BEDROOM_BOX, BEDROOM_POINT

#: sam2's Hydra override that makes every prompted frame a conditioning frame (what sessions need).
CORRECT_AS_COND = "++model.add_all_frames_to_correct_as_cond=true"
#: Frames of the bedroom clip the sequence runs on (each tracked frame costs one image encoding).
NUM_FRAMES = 4
LATER = 2  # the frame of the second object and of the correction
CORRECTION = [350, 200]  # a foreground click for object 1 on frame LATER, inside its box
#: Indices (in :func:`sequence`) of the first propagation, the correction, and the propagation after it.
FIRST_PROPAGATION, CORRECTION_STEP, AFTER_CORRECTION = 1, 3, 4
#: Index of the last propagation: both ways from ``later - 1``, where object 2 (the only one left) has no
#: prompt, so its backward pass tracks the start frame again, with another result than the forward pass.
LAST = 6


def sequence(later: int = LATER) -> list[tuple[str, dict]]:
    """The steps, with the second object and the correction on frame ``later`` (>= 2: the last
    propagation starts at ``later - 1`` > 0, after a propagation tracked object 2 on frame ``later - 2``,
    so that sam2, without our float32 memory cast, can track it there)."""
    assert later >= 2
    return [
        ("prompt", {"frame_index": 0, "obj_id": 1, "box_xyxy": BEDROOM_BOX}),
        ("propagate", {"direction": "forward"}),
        ("prompt", {"frame_index": later, "obj_id": 2, "points": [BEDROOM_POINT], "point_labels": [1]}),
        ("prompt", {"frame_index": later, "obj_id": 1, "points": [CORRECTION], "point_labels": [1], "clear_old_points": False}),
        ("propagate", {"start_frame": later, "direction": "both"}),
        ("remove", {"obj_id": 1}),
        ("propagate", {"start_frame": later - 1, "direction": "both"}),
    ]


STEPS = sequence()


def run_reference(predictor, state, steps=STEPS, superseded: dict | None = None) -> list[dict]:
    """``steps`` on sam2's own predictor and ``init_state``; one answer per step.

    Args:
        superseded: if given, filled with ``{step: {frame_index: masks}}``: a propagation's earlier result
            for a frame it tracked twice (the start frame of ``both``), which sam2 then replaced.
    """
    out = []
    for step, (kind, kw) in enumerate(steps):
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
                    if f in frames and superseded is not None:
                        superseded.setdefault(step, {})[f] = frames[f][1]
                    frames[f] = (list(ids), (logits[:, 0] > 0).numpy())
            out.append(frames)
        else:
            ids, updated = predictor.remove_object(state, kw["obj_id"], strict=True)
            out.append({f: (list(ids), (m[:, 0] > 0).numpy()) for f, m in updated})
    return out


def assert_same(ours: list[dict], reference: list[dict], steps=STEPS) -> None:
    """Per step, frame and object: the same frames, objects and masks, to the bit. Every propagated mask
    and the prompted object's mask are non-empty, and objects' masks differ from each other.

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
                assert np.array_equal(ma[k], mb[k]), f"step {step} frame {f} object {obj}: {int((ma[k] != mb[k]).sum())} pixels differ"
            if len(ids_b) == 2 and ma[0].any() and ma[1].any():
                assert not np.array_equal(ma[0], ma[1]), f"step {step} frame {f}: both objects have one mask"


def assert_correction_kept(answers: list[dict], steps=STEPS) -> None:
    """Not vacuous: the propagation after the correction returns, on the corrected frame, the masks the
    correction answered, and object 1's mask there differs from the first propagation's."""
    later = steps[CORRECTION_STEP][1]["frame_index"]
    (ids, corrected), = answers[CORRECTION_STEP].values()
    assert ids == [1, 2]
    assert answers[AFTER_CORRECTION][later][0] == ids
    assert np.array_equal(answers[AFTER_CORRECTION][later][1], corrected), "the propagation dropped the correction"
    assert not np.array_equal(answers[FIRST_PROPAGATION][later][1][0], corrected[0]), "the correction changed nothing"
