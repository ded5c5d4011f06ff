"""Envoy resources as plain dicts (for `meshgate translate`, golden files and logs).

Uses protobuf's JSON mapping with the proto field names (snake_case), as Envoy's docs and
`/config_dump` show them; resources are sorted by name and keys alphabetically (protobuf maps and
Structs have no stable order) so that the output is deterministic.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import MessageToDict

from meshgate.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from meshgate.xds.translator import Resources

SECTIONS = (("listeners", LISTENER), ("routes", ROUTE), ("clusters", CLUSTER), ("endpoints", ENDPOINT), ("secrets", SECRET))


def resources_to_dict(resources: Resources) -> dict[str, list[dict[str, Any]]]:
    out = {
        section: [MessageToDict(msg, preserving_proto_field_name=True) for _, msg in sorted(resources.get(type_url, {}).items())]
        for section, type_url in SECTIONS
    }
    return json.loads(json.dumps(out, sort_keys=True))  # plain dicts, keys sorted
