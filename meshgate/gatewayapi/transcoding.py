"""ExtensionRef filters naming a GRPCJSONTranscoder → `ir.GrpcJsonTranscoding`.

The descriptor set is read and checked here (a `file` relative to the transcoder's YAML file, or
the inline bytes), as Envoy would: an unreadable or invalid one, or a missing service, makes the
transcoder `Accepted=False` with the field and reason, and the rules naming it answer HTTP 500
(Gateway API's rule for a filter reference that can't be resolved: never skip the filter).
"""

from __future__ import annotations

import os

from meshgate.api.transcoding import GRPCJSONTranscoder, descriptor_set_problem
from meshgate.gatewayapi.status import Condition, object_key
from meshgate.ir import GrpcJsonTranscoding
from meshgate.providers.file import FileReadError

GROUP, KIND = "meshgate.io", "GRPCJSONTranscoder"


class TranscoderResolver:
    """Resolves a rule's ExtensionRef filter for one translation (each transcoder read once)."""

    def __init__(self, translator) -> None:  # noqa: ANN001 - gatewayapi.translator._Translator
        self.t = translator
        self.by_name = {(r.metadata.namespace, r.metadata.name): r for r in translator._context_objects
                        if isinstance(r, GRPCJSONTranscoder)}
        # Every transcoder is checked on every translation, used or not, so that its own status is
        # always current (routes may be reused from the memo without calling this again).
        self.resolved = {key: self._resolve(t) for key, t in sorted(self.by_name.items())}

    def __call__(self, route, r: int, f: int) -> GrpcJsonTranscoding | None:  # noqa: ANN001
        ref = route.spec.rules[r].filters[f].extension_ref
        where = ("spec", "rules", r, "filters", f, "extensionRef")
        ns = route.metadata.namespace  # a LocalObjectReference: always the route's namespace
        unresolved = lambda reason, message, path: self.t.status.condition(  # noqa: E731
            route, Condition("ResolvedRefs", "False", reason, message), path)
        if (ref.group, ref.kind) != (GROUP, KIND):
            unresolved("InvalidKind", f"{ref.group}/{ref.kind} {ref.name}: the only filter kind meshgate knows is "
                       f"{GROUP} {KIND}", (*where, "kind"))
            return None
        transcoder = self.by_name.get((ns, ref.name))
        if transcoder is None:
            unresolved("BackendNotFound", self.t._missing(GROUP, KIND, ns, ref.name), (*where, "name"))
            return None
        key = (ns, ref.name)
        if self.resolved[key] is None:
            unresolved("InvalidFilter", f"{KIND} {ns}/{ref.name} is not valid (see its own status)", (*where, "name"))
        return self.resolved[key]

    def _resolve(self, transcoder: GRPCJSONTranscoder) -> GrpcJsonTranscoding | None:
        spec = transcoder.spec
        source = spec.descriptor_set
        if source.inline is not None:
            data = source.inline_bytes()  # checked by the model already
        else:
            doc = self.t.docs[object_key(transcoder)]
            path = os.path.normpath(os.path.join(os.path.dirname(doc.file), source.file))
            where = ("spec", "descriptorSet", "file")
            try:
                data = self.t.read_file(path)
            except FileReadError as exc:
                return self._invalid(transcoder, f"cannot read file {path} ({exc.reason})", where)
            problem = descriptor_set_problem(data, spec.services)
            if problem:
                return self._invalid(transcoder, f"{path}: {problem}", where)
        p = spec.print_options
        return GrpcJsonTranscoding(
            name=f"{transcoder.metadata.namespace}/{transcoder.metadata.name}", descriptor_set=data,
            services=tuple(spec.services), add_whitespace=p.add_whitespace,
            always_print_primitive_fields=p.always_print_primitive_fields,
            always_print_enums_as_ints=p.always_print_enums_as_ints,
            preserve_proto_field_names=p.preserve_proto_field_names,
            ignore_unknown_query_parameters=spec.ignore_unknown_query_parameters,
            convert_grpc_status=spec.convert_grpc_status)

    def _invalid(self, transcoder: GRPCJSONTranscoder, message: str, where: tuple) -> None:
        self.t.status.condition(transcoder, Condition("Accepted", "False", "Invalid", message), where)
        return None
