"""Example bodies of the POST routes, shown in ``/docs`` and ``/openapi.json`` (``examples`` of each
route's ``application/json`` body, see :func:`serve_app.ingress.openapi.body_spec`).

Each is a request the route accepts as it is (``tests/integration/test_openapi_bodies.py`` sends them),
on a 16x16 PNG inline, so "Try it out" works without an upload. ``/v1/predict``'s needs the collection
that ``/v1/examples``'s example fills.
"""

from __future__ import annotations

#: A 16x16 RGB PNG (a gradient with a white 8x8 square at x, y in [4, 12)), base64.
TINY_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAANUlEQVR42mNkYGAQIAWxMAgwkATorGH//v9YFR10ZCTRBgGG"
    "UQ3ka3A8yIg9CQkMWNIgBgAACxwHobLwBjMAAAAASUVORK5CYII="
)
#: The collection of the examples below.
EXAMPLE_COLLECTION = "demo"
#: A session id of the form ``POST /v1/video/sessions`` returns (32 hex digits).
EXAMPLE_SESSION_ID = "9f0c1b6e2a4d4c8e9f1a5b7d9e2c4a60"
#: An example id of the form ``POST /v1/examples`` returns (a UUID).
EXAMPLE_ID = "3f0c1b6e-2a4d-4c8e-9f1a-5b7d9e2c4a60"
_IMAGE = {"base64": TINY_PNG_BASE64}
_BOX = [4, 4, 12, 12]

SEGMENT_EXAMPLES = {
    "box": {
        "summary": "a box prompt on an inline image",
        "value": {"image": _IMAGE, "prompts": [{"box_xyxy": _BOX}], "max_masks": 1},
    },
    "points": {
        "summary": "a foreground and a background click, masks as PNG",
        "value": {"image": _IMAGE, "prompts": [{"points": [[8, 8, 1], [1, 1, 0]]}], "mask_format": "png"},
    },
}
EXAMPLE_EXAMPLES = {
    "box": {
        "summary": "label the object in a box",
        "value": {"image": _IMAGE, "box_xyxy": _BOX, "label": "square", "collection": EXAMPLE_COLLECTION},
    },
}
PREDICT_EXAMPLES = {
    "collection": {
        "summary": "label every object from the examples of a collection",
        "value": {"image": _IMAGE, "collection": EXAMPLE_COLLECTION, "top_k": 3, "max_instances": 4},
    },
}
VIDEO_EXAMPLES = {
    "frames": {
        "summary": "track one boxed object through two frames",
        "value": {
            "frames": [_IMAGE, _IMAGE],
            "objects": [{"obj_id": 1, "prompts": [{"frame_index": 0, "box_xyxy": _BOX}]}],
        },
    },
}
POLYGON_EXAMPLES = {
    "square": {
        "summary": "an 8x8 square in a 16x16 mask, as COCO RLE (column-major runs)",
        "value": {"masks": [{"size": [16, 16], "counts": "T2880000000000000l1"}]},
    },
}
SESSION_EXAMPLES = {
    "frames": {"summary": "open a session on two frames", "value": {"frames": [_IMAGE, _IMAGE]}},
}
SESSION_PROMPT_EXAMPLES = {
    "box": {"summary": "a box for object 1 on frame 0", "value": {"obj_id": 1, "frame_index": 0, "box_xyxy": _BOX}},
}
PROPAGATE_EXAMPLES = {
    "forward": {"summary": "track forward from the first prompted frame", "value": {"direction": "forward"}},
}

#: A Label Studio project's label config: masks as polygons (brush labels need label-studio-sdk), clicked
#: with smart keypoints.
LS_LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<PolygonLabels name="tag" toName="image"><Label value="square"/></PolygonLabels>'
    '<KeyPointLabels name="kp" toName="image" smart="true"><Label value="square" smart="true"/></KeyPointLabels>'
    "</View>"
)
_LS_PROJECT = "1.1700000000"
LS_SETUP_EXAMPLES = {
    "setup": {
        "summary": "Label Studio's connection check, after /health",
        "value": {"project": _LS_PROJECT, "schema": LS_LABEL_CONFIG, "extra_params": None},
    }
}
LS_PREDICT_EXAMPLES = {
    "click": {
        "summary": "an annotator's positive keypoint at the image centre (percent), on a task with an inline image",
        "value": {
            "tasks": [{"id": 1, "data": {"image": f"data:image/png;base64,{TINY_PNG_BASE64}"}}],
            "project": _LS_PROJECT,
            "label_config": LS_LABEL_CONFIG,
            "params": {
                "context": {
                    "result": [
                        {
                            "type": "keypointlabels",
                            "from_name": "kp",
                            "to_name": "image",
                            "original_width": 16,
                            "original_height": 16,
                            "is_positive": True,
                            "value": {"x": 50.0, "y": 50.0, "width": 1.0, "keypointlabels": ["square"]},
                        }
                    ]
                }
            },
        },
    }
}
LS_WEBHOOK = {
    "annotation": {
        "summary": "an annotation was created",
        "value": {"action": "ANNOTATION_CREATED", "project": {"id": 1}},
    }
}
