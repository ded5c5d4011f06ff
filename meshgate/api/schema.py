"""JSON Schema of every kind, for editors (yaml-language-server) and, later, CRDs."""

from __future__ import annotations

from typing import Any

from meshgate.api.models import KINDS


def json_schemas() -> dict[str, dict[str, Any]]:
    """`apiVersion/kind` -> JSON Schema (draft 2020-12) of that document, using YAML field names."""
    return {
        f"{api_version}/{kind}": model.model_json_schema(by_alias=True, mode="validation")
        for (api_version, kind), model in sorted(KINDS.items())
    }
