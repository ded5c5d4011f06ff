"""The audit log's Envoy half: every request Envoy itself denied (401/403) or rate-limited (429).

Two more access loggers on each HTTP connection manager, writing JSON lines to `--audit-log`
(where the control plane writes its config changes, meshgate.controlplane.audit). Each has a CEL
access-log filter (`envoy.access_loggers.extension_filters.cel`) that keeps only replies Envoy
generated: `response.code_details` is "via_upstream" when the status came from the backend, so
an application's own 403 is not an audit event, while jwt_authn, rbac, basic/API-key auth,
ext_authz (request signatures) and the local/global rate limits all are. The reason is Envoy's
response code details (e.g. `jwt_authn_access_denied{Jwt_is_expired}`, `rbac_access_denied_matched_policy[none]`,
`local_rate_limited`).

Never the credential: no request header but the request id is written, and the path is logged
without its query string (where API keys and tokens travel).
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from google.protobuf import any_pb2, struct_pb2

_LOCAL = "response.code_details != 'via_upstream'"
EVENTS = {
    "auth_denied": f"(response.code == 401 || response.code == 403) && {_LOCAL}",
    "rate_limited": f"response.code == 429 && {_LOCAL}",
}

# One JSON object per event; docs/observability.md lists the fields.
def _format(event: str) -> dict[str, str]:
    return {
        "time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
        "event": event,
        "route": "%ROUTE_NAME%",
        "reason": "%RESPONSE_CODE_DETAILS%",
        "response_code": "%RESPONSE_CODE%",
        "client_address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "method": "%REQ(:METHOD)%",
        "authority": "%REQ(:AUTHORITY)%",
        "path": "%PATH(NQ:ORIG_OR_PATH)%",
    }


def _pack(message) -> any_pb2.Any:  # noqa: ANN001
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def audit_access_logs(path: str) -> list[accesslog_pb2.AccessLog]:
    """The access loggers that write Envoy's audit events to `path`."""
    logs = []
    for event, expression in EVENTS.items():
        file_log = file_pb2.FileAccessLog(path=path)
        fmt = struct_pb2.Struct()
        fmt.update(_format(event))
        file_log.log_format.json_format.CopyFrom(fmt)
        cel = cel_pb2.ExpressionFilter(expression=expression)
        logs.append(accesslog_pb2.AccessLog(
            name="envoy.access_loggers.file",
            filter=accesslog_pb2.AccessLogFilter(extension_filter=accesslog_pb2.ExtensionFilter(
                name="envoy.access_loggers.extension_filters.cel", typed_config=_pack(cel))),
            typed_config=_pack(file_log)))
    return logs
