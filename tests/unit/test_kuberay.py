"""configs/kuberay/rayservice.yaml: its serveConfigV2 is configs/serve.gpu.yaml, and it passes KubeRay's own
RayService CRD schema strictly (a field the schema does not list is an error, as with ``kubeconform -strict``).

The schema is ``../shared/schemas/kuberay-rayservice-v1.schema.json`` (the CRD's ``openAPIV3Schema``; see
``SOURCES.md`` there). Where that folder is absent the schema tests skip, unless ``SAMGRAPH_REQUIRE_DATA=1``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "configs" / "kuberay" / "rayservice.yaml"
GPU_CONFIG = REPO / "configs" / "serve.gpu.yaml"
SCHEMA = REPO.parent / "shared" / "schemas" / "kuberay-rayservice-v1.schema.json"
METRICS_EXPORT_PORT = 8080  # Ray's default under KubeRay; docs/metrics.md, docs/kubernetes.md
SERVE_PORT = 8000

# Kubernetes ObjectMeta as a manifest may set it (the CRD leaves `metadata` a bare object: the API server
# validates it itself). Server-set fields (uid, resourceVersion, managedFields, ...) are allowed loosely.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": _DNS_SUBDOMAIN},
        "namespace": {"type": "string", "minLength": 1, "maxLength": 63},
        "generateName": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
        **{
            field: {}
            for field in ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
                          "deletionGracePeriodSeconds", "ownerReferences", "managedFields", "selfLink")
        },
    },
}


def strict_schema(node: object) -> object:
    """A copy of a Kubernetes structural schema in which unlisted fields are errors.

    Every object schema with ``properties`` and neither ``additionalProperties`` nor
    ``x-kubernetes-preserve-unknown-fields: true`` gets ``additionalProperties: false``. The Kubernetes
    extensions become JSON Schema: ``x-kubernetes-int-or-string`` allows an integer or a string,
    ``x-kubernetes-preserve-unknown-fields: true`` allows any further field, and OpenAPI's
    ``nullable: true`` allows null.
    """
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in ("properties", "patternProperties", "definitions"):
        if isinstance(node.get(key), dict):
            out[key] = {name: strict_schema(sub) for name, sub in node[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            out[key] = strict_schema(node[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if isinstance(node.get(key), list):
            out[key] = [strict_schema(sub) for sub in node[key]]
    if node.get("x-kubernetes-int-or-string") is True and "anyOf" not in node:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") is True and isinstance(node.get("type"), str):
        out["type"] = [node["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    return out


def _errors(validator: Draft7Validator, manifest: dict) -> list[str]:
    """Every validation error as ``'<json path>: <message>'``, sorted."""
    return sorted(f"{e.json_path}: {e.message}" for e in validator.iter_errors(manifest))


@pytest.fixture(scope="module")
def crd_schema() -> dict:
    if not SCHEMA.is_file():
        if os.environ.get("SAMGRAPH_REQUIRE_DATA") == "1":
            pytest.fail(f"{SCHEMA} not present and SAMGRAPH_REQUIRE_DATA=1")
        pytest.skip(f"{SCHEMA} not present (../shared/schemas is beside the checkout on project machines)")
    return json.loads(SCHEMA.read_text())


@pytest.fixture(scope="module")
def strict_validator(crd_schema) -> Draft7Validator:
    schema = strict_schema(crd_schema)
    schema["properties"]["metadata"] = OBJECT_META
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def test_serve_config_v2_is_the_gpu_serve_config(manifest):
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load(GPU_CONFIG.read_text()), (
        "spec.serveConfigV2 of configs/kuberay/rayservice.yaml differs from configs/serve.gpu.yaml. Re-sync it: "
        "replace the block under `serveConfigV2: |` with the output of  sed 's/^./    &/' configs/serve.gpu.yaml"
    )


def test_manifest_passes_the_crd_schema_strictly(manifest, strict_validator):
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    assert "status" not in manifest  # the operator writes it
    assert _errors(strict_validator, manifest) == []


def _rename(field: str, to: str):
    def edit(m: dict) -> None:
        head = m["spec"]["rayClusterConfig"]["headGroupSpec"]
        head[to] = head.pop(field)

    return edit


def _set(path: tuple, value: object):
    def edit(m: dict) -> None:
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


_CLUSTER = ("spec", "rayClusterConfig")
_GPU_GROUP = (*_CLUSTER, "workerGroupSpecs", 1)
_GPU_CONTAINER = (*_GPU_GROUP, "template", "spec", "containers", 0)
_HEAD_AT = "$.spec.rayClusterConfig.headGroupSpec"
_GPU_AT = "$.spec.rayClusterConfig.workerGroupSpecs[1]"
_GPU_CONTAINER_AT = f"{_GPU_AT}.template.spec.containers[0]"


@pytest.mark.parametrize(
    "edit, where",
    [
        # misspelled or unknown fields: Kubernetes would drop them silently
        pytest.param(_rename("rayStartParams", "rayStartParam"), _HEAD_AT, id="misspelled-rayStartParam"),
        pytest.param(_set((*_GPU_GROUP, "maxReplica"), 9), _GPU_AT, id="misspelled-maxReplica"),
        pytest.param(_set((*_GPU_CONTAINER, "port"), []), _GPU_CONTAINER_AT, id="unknown-container-field"),
        # wrong types
        pytest.param(_set((*_GPU_GROUP, "maxReplicas"), "9"), f"{_GPU_AT}.maxReplicas", id="string-for-integer"),
        pytest.param(
            _set((*_CLUSTER, "enableInTreeAutoscaling"), "true"),
            "$.spec.rayClusterConfig.enableInTreeAutoscaling",
            id="string-for-boolean",
        ),
        pytest.param(
            _set((*_CLUSTER, "headGroupSpec", "rayStartParams", "num-cpus"), 0),
            f"{_HEAD_AT}.rayStartParams['num-cpus']",
            id="integer-for-string",
        ),
        pytest.param(_set(("spec", "serveConfigV2"), {"applications": []}), "$.spec.serveConfigV2", id="object-for-string"),
        pytest.param(
            _set((*_GPU_CONTAINER, "resources", "limits", "memory"), 4.5),
            f"{_GPU_CONTAINER_AT}.resources.limits.memory",
            id="float-for-int-or-string",
        ),
        # missing required fields, in the CRD and in ObjectMeta
        pytest.param(
            lambda m: m["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].pop("groupName"),
            "$.spec.rayClusterConfig.workerGroupSpecs[0]",
            id="no-groupName",
        ),
        pytest.param(lambda m: m["metadata"].pop("name"), "$.metadata", id="no-metadata-name"),
    ],
)
def test_schema_check_refuses_broken_manifests(manifest, strict_validator, edit, where):
    broken = copy.deepcopy(manifest)
    edit(broken)
    errors = _errors(strict_validator, broken)
    assert any(e.startswith(f"{where}: ") for e in errors), errors


def test_strictness_is_what_catches_a_misspelled_field(manifest, crd_schema):
    """The CRD schema as Kubernetes reads it accepts the typo (and would prune it): only the strict check refuses it."""
    broken = copy.deepcopy(manifest)
    _rename("rayStartParams", "rayStartParam")(broken)
    assert _errors(Draft7Validator(crd_schema), broken) == []


def test_int_or_string_and_preserve_unknown_fields():
    schema = strict_schema(
        {
            "type": "object",
            "properties": {
                "port": {"x-kubernetes-int-or-string": True},
                "free": {
                    "type": "object",
                    "properties": {"a": {"type": "string"}},
                    "x-kubernetes-preserve-unknown-fields": True,
                },
                "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
            },
        }
    )
    v = Draft7Validator(schema)
    assert v.is_valid({"port": 8080}) and v.is_valid({"port": "http"}) and not v.is_valid({"port": 1.5})
    assert v.is_valid({"free": {"a": "x", "anything": [1]}}) and not v.is_valid({"free": {"a": 1}})
    assert not v.is_valid({"closed": {"b": "x"}}) and not v.is_valid({"other": 1})


def test_every_pod_exposes_serve_and_metrics_ports(manifest):
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == "2.60.0"
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        assert group["rayStartParams"]["metrics-export-port"] == str(METRICS_EXPORT_PORT)
        template = group["template"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_EXPORT_PORT)
        (container,) = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == METRICS_EXPORT_PORT and ports["serve"] == SERVE_PORT
    serve = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert serve["http_options"]["port"] == SERVE_PORT and serve["http_options"]["host"] == "0.0.0.0"


def test_worker_groups_hold_the_serve_replicas(manifest):
    """min_replicas of every stage fit the groups' minReplicas, and max_replicas their maxReplicas.

    CPU-only stages go to the CPU group; GPU stages to the GPU group (one GPU per pod), packed by their
    fractional num_gpus. The head has num-cpus 0 and holds no replica.
    """
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}

    def pod(group: dict) -> tuple[float, float]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        return float(limits["cpu"]), float(limits.get("nvidia.com/gpu", 0))

    deployments = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]["deployments"]
    for bound, pods in (("min_replicas", "minReplicas"), ("max_replicas", "maxReplicas")):
        need = {"cpu": [0.0, 0.0], "gpu": [0.0, 0.0]}
        for d in deployments:
            n = d.get("num_replicas") or d["autoscaling_config"][bound]
            opts = d["ray_actor_options"]
            group = "gpu" if opts.get("num_gpus") else "cpu"
            need[group][0] += n * opts.get("num_cpus", 1)
            need[group][1] += n * opts.get("num_gpus", 0)
        for name, (cpus, gpus) in need.items():
            pod_cpus, pod_gpus = pod(groups[name])
            count = groups[name][pods]
            assert cpus <= count * pod_cpus, (name, bound, cpus, count, pod_cpus)
            assert gpus <= count * pod_gpus, (name, bound, gpus, count, pod_gpus)
