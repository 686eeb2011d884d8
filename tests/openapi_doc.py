"""Reading the app's OpenAPI document in tests: validate a value against one of its components."""

from __future__ import annotations

import jsonschema


def conforms(spec: dict, component: str, instance) -> None:
    """Validate ``instance`` against ``#/components/schemas/<component>`` of the OpenAPI 3.1 document
    ``spec`` (its schemas are JSON Schema 2020-12), formats included.

    Raises:
        jsonschema.ValidationError: the first rule ``instance`` breaks.
    """
    root = {"$ref": f"#/components/schemas/{component}", "components": spec["components"]}
    jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker()).validate(instance)
