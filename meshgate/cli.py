"""`meshgate` command line: thin — parse flags, build objects, run.

  meshgate validate PATH...           check config files; one `FILE:LINE: field: problem` line each
  meshgate translate PATH...          print the Envoy resources the config becomes (private keys redacted)
  meshgate run PATH...                control plane + local Envoy + sample upstreams, hot reload
  meshgate xds PATH...                the control plane alone (ADS + status servers)
  meshgate bootstrap                  print an Envoy bootstrap that connects to `meshgate xds`
  meshgate schema [KIND]              JSON Schema of every kind
  meshgate crds [--rbac]              CustomResourceDefinitions of meshgate's kinds (YAML)
  meshgate rbac                       ServiceAccount, ClusterRole and bindings for `xds --kubernetes`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from meshgate import __version__
from meshgate.errors import ConfigErrors


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshgate", description="API gateway: a Python control plane around real Envoy.")
    p.add_argument("--version", action="version", version=f"meshgate {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_args(cmd: argparse.ArgumentParser, paths: str = "+") -> None:
        cmd.add_argument("paths", nargs=paths, metavar="PATH", help="YAML files or folders (multi-document)")
        cmd.add_argument("--env", help="merge overlay files NAME.ENV.yaml over NAME.yaml")

    v = sub.add_parser("validate", help="check config files and report every problem")
    config_args(v)

    t = sub.add_parser("translate", help="print the Envoy listeners, routes, clusters and endpoints")
    config_args(t)
    t.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    t.add_argument("--bind", default="0.0.0.0", help="address the listeners bind to (default 0.0.0.0)")
    t.add_argument("--show-secrets", action="store_true",
                   help="print TLS private keys as they are (by default they show as [redacted])")

    def server_args(cmd: argparse.ArgumentParser, access_log_default: str, paths: str = "+") -> None:
        # Both servers are unauthenticated: loopback unless the user chooses to expose them.
        config_args(cmd, paths)
        cmd.add_argument("--xds-address", default="127.0.0.1:18000",
                         help="ADS gRPC server address, host:port (default 127.0.0.1:18000; "
                              "0.0.0.0:18000 serves Envoys on other hosts)")
        cmd.add_argument("--status-address", default="127.0.0.1:19000",
                         help="status/metrics HTTP address, host:port (default 127.0.0.1:19000)")
        cmd.add_argument("--group", default="edge", help="node group (Envoy node.cluster) to serve")
        cmd.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        cmd.add_argument("--max-objects-per-namespace", type=_limit, default=None, metavar="N",
                         help="per-tenant limit: at most N objects (Gateways, routes, Backends, policies, ...) per "
                              "namespace are programmed, the oldest; the rest get Accepted=False "
                              "NamespaceLimitExceeded (default: no limit; docs/architecture.md#tenants)")
        cmd.add_argument("--max-routes-per-namespace", type=_limit, default=None, metavar="N",
                         help="per-tenant limit: at most N routes per namespace are programmed, the oldest "
                              "(default: no limit)")
        cmd.add_argument("--route-stats", default="on", choices=["on", "off"],
                         help="Envoy statistics per route rule (default on; each rule costs Envoy memory and "
                              "reload time: turn off for configs of many thousands of rules)")
        cmd.add_argument("--access-log", default="", metavar="PATH|off",
                         help=f"where Envoy writes its JSON access log (default: {access_log_default}); 'off' writes none")
        cmd.add_argument("--audit-log", metavar="PATH", default=None,
                         help="append audit events as JSON lines: every config change (control plane) and every "
                              "request Envoy denied or rate-limited (Envoy writes the same path on its own host); "
                              "default: none")
        cmd.add_argument("--health-check", metavar="NAME=URL[,optional][,interval=S]", action="append", default=[],
                         help="a custom check in /readyz: http(s)://... (2xx/3xx is ok) or tcp://HOST:PORT, probed "
                              "every 5 s by default; gates readiness unless ',optional' (repeat for more; "
                              "docs/observability.md)")
        cmd.add_argument("--consul-address", metavar="URL", default=None,
                         help="the Consul agent that Backends with spec.consul ask (default: $CONSUL_HTTP_ADDR, "
                              "else http://127.0.0.1:8500; see docs/consul.md)")
        cmd.add_argument("--consul-token-file", metavar="PATH", default=None,
                         help="a file holding the Consul ACL token (default: $CONSUL_HTTP_TOKEN)")

    r = sub.add_parser("run", help="run control plane, a local Envoy and sample upstreams; reload on edit")
    server_args(r, "STATE_DIR/access.log")
    r.add_argument("--bind", default="127.0.0.1", help="address Gateway listeners bind to (default 127.0.0.1)")
    r.add_argument("--admin-port", type=int, default=19901, help="Envoy admin port on 127.0.0.1 (0 = any free)")
    r.add_argument("--stats-address", default="127.0.0.1:19902", metavar="HOST:PORT|off",
                   help="where Envoy serves Prometheus metrics (/stats/prometheus; default 127.0.0.1:19902); 'off' for none")
    r.add_argument("--state-dir", type=Path, default=Path(".meshgate"), help="Envoy bootstrap, logs, access log")
    r.add_argument("--concurrency", type=int, default=1, help="Envoy worker threads")
    r.add_argument("--delta", action="store_true", help="use delta (incremental) xDS instead of state of the world")
    r.add_argument("--no-sample-upstreams", action="store_true", help="don't start echo servers for annotated Backends")
    r.add_argument("--edge-address", metavar="HOST:PORT", default=None,
                   help="where Envoy reaches the edge companion (default: a free loopback port)")
    r.add_argument("--no-edge", action="store_true",
                   help="don't start the edge companion: one runs elsewhere (meshgate edge --address = --edge-address)")
    r.add_argument("--envoy-log-level", default="warning")

    x = sub.add_parser("xds", help="run the control plane alone (ADS + status servers), reload on edit",
                       description="Run the control plane alone: ADS and status servers, reloading on edit. "
                                   "Gateway listeners of the Envoys it serves bind to 0.0.0.0.")
    server_args(x, "Envoy's stdout", paths="*")
    x.add_argument("--xds-tls-cert", metavar="PEM", help="serve ADS over mutual TLS with this certificate (and "
                   "--xds-tls-key, --xds-client-ca); clients must present a certificate the CA signed, naming their "
                   "node group (docs/deployment.md)")
    x.add_argument("--xds-tls-key", metavar="PEM", help="the private key of --xds-tls-cert")
    x.add_argument("--xds-client-ca", metavar="PEM", help="the CA that signs the Envoys' client certificates")
    x.add_argument("--xds-tls-any-group", action="store_true",
                   help="with mutual TLS, let any client certificate ask for any node group")
    x.add_argument("--kubernetes", action="store_true",
                   help="read Gateway API objects, meshgate CRDs, Secrets, Services and EndpointSlices from the "
                        "Kubernetes API instead of files (see docs/kubernetes.md)")
    x.add_argument("--kubeconfig", metavar="PATH",
                   help="with --kubernetes: the kubeconfig to use (default: $KUBECONFIG, else the pod's service account)")
    x.add_argument("--gateway-address", action="append", default=[], metavar="IP|HOSTNAME",
                   help="with --kubernetes: an address clients reach the Envoys at (the Service in front of them), "
                        "reported in every Gateway's status.addresses; repeatable")

    b = sub.add_parser("bootstrap", help="print an Envoy bootstrap (JSON) that connects to meshgate xds")
    b.add_argument("--xds-address", default="127.0.0.1:18000")
    b.add_argument("--group", default="edge")
    b.add_argument("--node-id", default=None, help="Envoy node.id, unique per Envoy (default: $POD_NAME if set, else HOSTNAME-PID of this meshgate process)")
    b.add_argument("--admin-port", type=int, default=19901)
    b.add_argument("--delta", action="store_true")
    b.add_argument("--xds-tls-cert", metavar="PEM", help="connect over mutual TLS with this client certificate "
                   "(and --xds-tls-key, --xds-ca); its name must be the --group")
    b.add_argument("--xds-tls-key", metavar="PEM")
    b.add_argument("--xds-ca", metavar="PEM", help="the CA that signed meshgate xds's certificate")
    b.add_argument("--xds-server-name", help="the name meshgate xds's certificate must carry (default: the --xds-address host)")
    b.add_argument("--stats-address", default="off", metavar="HOST:PORT|off",
                   help="add a listener serving Envoy's Prometheus metrics (/stats/prometheus, /ready) there, "
                        "e.g. 0.0.0.0:19902 for Prometheus on other hosts; needs a fixed --admin-port (default off)")

    e = sub.add_parser("edge", help="run the edge companion (ext_authz for request signatures, the global "
                       "rate-limit service), configured over ADS",
                       description="The edge companion: Envoy's ext_authz service for SecurityPolicy "
                                   "requestSignature, with its policies and keys from meshgate's ADS server.")
    e.add_argument("--xds-address", default="127.0.0.1:18000", help="meshgate's ADS server (default 127.0.0.1:18000)")
    e.add_argument("--address", default="127.0.0.1:18002",
                   help="where Envoy's ext_authz reaches this companion (gRPC; default 127.0.0.1:18002)")
    e.add_argument("--metrics-address", default="127.0.0.1:19003", metavar="HOST:PORT|off",
                   help="Prometheus metrics (/metrics; default 127.0.0.1:19003); 'off' for none")
    e.add_argument("--node-id", default="", help="xDS node.id (default meshgate-edge-HOSTNAME)")
    e.add_argument("--xds-tls-cert", metavar="PEM", help="reach the ADS server over mutual TLS with this client "
                   "certificate (and --xds-tls-key, --xds-ca); its name must be meshgate-edge, the companion's group")
    e.add_argument("--xds-tls-key", metavar="PEM", help="the private key of --xds-tls-cert")
    e.add_argument("--xds-ca", metavar="PEM", help="the CA that signed meshgate xds's server certificate")
    e.add_argument("--xds-server-name", help="the name meshgate xds's certificate must carry (default: the --xds-address host)")
    e.add_argument("--replay-cache-size", type=int, default=100_000, help="nonces remembered (in memory)")
    e.add_argument("--redis-url", default=os.environ.get("MESHGATE_REDIS_URL", "redis://127.0.0.1:6379/0"),
                   help="the Redis of the global rate-limit counters, shared by every companion replica "
                        "(default $MESHGATE_REDIS_URL or redis://127.0.0.1:6379/0)")
    e.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    s = sub.add_parser("schema", help="print the JSON Schema of every kind (or one)")
    s.add_argument("kind", nargs="?", help="e.g. HTTPRoute, Backend, gateway.networking.k8s.io/v1/Gateway")

    c = sub.add_parser("crds", help="print the CustomResourceDefinitions of meshgate's kinds (YAML, for kubectl apply)")
    c.add_argument("--rbac", action="store_true", help="also print what `meshgate rbac` prints")
    c.add_argument("--namespace", default="meshgate", help="with --rbac: the control plane's namespace (default meshgate)")
    rb = sub.add_parser("rbac", help="print the ServiceAccount, ClusterRole and bindings `meshgate xds --kubernetes` needs")
    rb.add_argument("--namespace", default="meshgate", help="the control plane's namespace (default meshgate)")
    rb.add_argument("--name", default="meshgate", help="name of the ServiceAccount and roles (default meshgate)")
    return p


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


def _load_or_report(args: argparse.Namespace, count: bool = False):
    """The validated Config, or None after printing one `FILE:LINE: field: problem` line each."""
    from meshgate.api.config import load_config

    try:
        return load_config(args.paths, env=args.env)
    except ConfigErrors as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        if count:
            print(f"{len(exc.errors)} problem(s) found", file=sys.stderr)
        return None


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load_or_report(args, count=True)
    if config is None:
        return 1
    s = config.summary()
    print(f"valid: {s['gateways']} gateways, {s['listeners']} listeners, {s['routes']} routes, {s['backends']} backends")
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    from meshgate.controlplane.pipeline import compile_config
    from meshgate.xds.render import resources_to_dict
    from meshgate.xds.translator import TranslateOptions

    config = _load_or_report(args)
    if config is None:
        return 1
    out = resources_to_dict(compile_config(config, TranslateOptions(bind_address=args.bind)))
    if not args.show_secrets:
        from meshgate.redact import redact_secrets

        out = redact_secrets(out)
    if args.output == "json":
        print(json.dumps(out, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(out, sort_keys=False, width=120), end="")
    return 0


def _limit(text: str) -> int:
    """A per-tenant limit: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a limit: give at least 1, or leave the flag out for none")
    return value


def _run_options(args: argparse.Namespace):
    from meshgate.runner import RunOptions

    xds_host, xds_port = _split(args.xds_address)
    status_host, status_port = _split(args.status_address)
    opts = RunOptions(paths=args.paths, env=args.env, group=args.group, xds_host=xds_host, xds_port=xds_port,
                      status_host=status_host, status_port=status_port, log_level=args.log_level,
                      access_log=None if args.access_log == "off" else args.access_log)
    opts.consul_address, opts.consul_token_file = args.consul_address, args.consul_token_file
    import os

    from meshgate.xds.translator.tracing import otlp_grpc_endpoint, tracing_from_env

    opts.tracing = tracing_from_env(os.environ)  # OTEL_EXPORTER_OTLP_ENDPOINT & co.; None = no tracing
    opts.otlp_metrics = otlp_grpc_endpoint(os.environ, "METRICS")  # `meshgate run`'s Envoy pushes them too
    if opts.otlp_metrics is not None:
        from meshgate.otlp import metric_interval

        metric_interval(os.environ)  # the control plane pushes its own every OTEL_METRIC_EXPORT_INTERVAL: checked now
    opts.route_stats = args.route_stats == "on"
    opts.max_objects_per_namespace = args.max_objects_per_namespace
    opts.max_routes_per_namespace = args.max_routes_per_namespace
    opts.audit_log = args.audit_log
    opts.health_checks = list(getattr(args, "health_checks", []))  # parsed by _health_checks_invalid
    return opts


def _audit_log_unwritable(command: str, path: str | None) -> bool:
    """Say so (and True) when `--audit-log` can't be appended to: found at start, not as every
    Envoy rejecting its listeners (it opens the file when it builds them)."""
    if not path:
        return False
    import os

    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))
    except OSError as exc:
        print(f"meshgate {command}: --audit-log {path}: cannot append to it: {exc.strerror}", file=sys.stderr)
        return True
    return False


_BUILT_IN_CHECKS = ("kubernetes", "edge_companion", "consul", "redis", "jwks:URI")


def _health_checks_invalid(command: str, args: argparse.Namespace) -> bool:
    """Parse `--health-check`s into args.health_checks; say what is wrong (and True) if one is bad."""
    from meshgate.controlplane.health_checks import parse_health_check

    specs = []
    for text in args.health_check:
        try:
            spec = parse_health_check(text)
        except ValueError as exc:
            print(f"meshgate {command}: --health-check {exc}", file=sys.stderr)
            return True
        if spec.name in _BUILT_IN_CHECKS or spec.name.startswith("jwks:") or spec.name in {s.name for s in specs}:
            print(f"meshgate {command}: --health-check {text!r}: the name {spec.name!r} is taken "
                  f"(built in: {', '.join(_BUILT_IN_CHECKS)})", file=sys.stderr)
            return True
        specs.append(spec)
    args.health_checks = specs
    return False


def cmd_run(args: argparse.Namespace) -> int:
    from meshgate.logs import setup_logging
    from meshgate.runner import run_local

    setup_logging(args.log_level)
    if _audit_log_unwritable("run", args.audit_log) or _health_checks_invalid("run", args):
        return 2
    opts = _run_options(args)
    opts.bind_address = args.bind
    opts.admin_port = args.admin_port
    opts.stats_host, opts.stats_port = (None, None) if args.stats_address == "off" else _split(args.stats_address)
    opts.stats_host = opts.stats_host or "127.0.0.1"
    opts.state_dir = args.state_dir
    opts.concurrency = args.concurrency
    opts.delta = args.delta
    opts.sample_upstreams = not args.no_sample_upstreams
    opts.edge_address = _split(args.edge_address) if args.edge_address else None
    opts.start_edge = not args.no_edge
    opts.envoy_log_level = args.envoy_log_level
    return asyncio.run(run_local(opts))


def cmd_xds(args: argparse.Namespace) -> int:
    from meshgate.logs import setup_logging
    from meshgate.runner import serve_xds

    setup_logging(args.log_level)
    if args.kubernetes == bool(args.paths):
        print("meshgate xds: give config PATHs or --kubernetes (one of them)", file=sys.stderr)
        return 2
    if args.kubeconfig and not args.kubernetes:
        print("meshgate xds: --kubeconfig needs --kubernetes", file=sys.stderr)
        return 2
    if _audit_log_unwritable("xds", args.audit_log) or _health_checks_invalid("xds", args):
        return 2
    opts = _run_options(args)
    opts.bind_address = "0.0.0.0"
    opts.kubernetes, opts.kubeconfig = args.kubernetes, args.kubeconfig
    if args.gateway_address and not args.kubernetes:
        print("meshgate xds: --gateway-address needs --kubernetes", file=sys.stderr)
        return 2
    opts.gateway_addresses = tuple(args.gateway_address)
    tls_files = (args.xds_tls_cert, args.xds_tls_key, args.xds_client_ca)
    if any(tls_files) and not all(tls_files):
        print("meshgate xds: mutual TLS needs --xds-tls-cert, --xds-tls-key and --xds-client-ca together", file=sys.stderr)
        return 2
    if all(tls_files):
        from meshgate.xds.tls import XdsTLS

        opts.xds_tls = XdsTLS(*tls_files, bind_group=not args.xds_tls_any_group)
    return asyncio.run(serve_xds(opts))


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from meshgate.envoy.bootstrap import BootstrapOptions, render_bootstrap
    from meshgate.xds.translator.tracing import otlp_grpc_endpoint

    host, port = _split(args.xds_address)
    stats_host, stats_port = ("127.0.0.1", None) if args.stats_address == "off" else _split(args.stats_address)
    if stats_port is not None and not args.admin_port:
        print("meshgate: --stats-address needs a fixed --admin-port (its listener forwards to the admin interface)",
              file=sys.stderr)
        return 2
    tls_files = (args.xds_tls_cert, args.xds_tls_key, args.xds_ca)
    if any(tls_files) and not all(tls_files):
        print("meshgate bootstrap: mutual TLS needs --xds-tls-cert, --xds-tls-key and --xds-ca together", file=sys.stderr)
        return 2
    from meshgate.envoy.bootstrap import XdsClientTLS

    # Absolute paths: Envoy resolves them from its own working directory.
    tls = XdsClientTLS(*(os.path.abspath(f) for f in tls_files), server_name=args.xds_server_name) if all(tls_files) else None
    print(json.dumps(render_bootstrap(BootstrapOptions(
        xds_host=host, xds_port=port, node_id=args.node_id, node_cluster=args.group,
        admin_port=args.admin_port, delta=args.delta, stats_host=stats_host, stats_port=stats_port,
        xds_tls=tls, otlp_metrics=otlp_grpc_endpoint(os.environ, "METRICS"))), indent=2))
    return 0


def cmd_edge(args: argparse.Namespace) -> int:
    from meshgate.edge.server import EdgeOptions, serve
    from meshgate.logs import setup_logging

    setup_logging(args.log_level)
    tls_flags = (args.xds_tls_cert, args.xds_tls_key, args.xds_ca)
    if any(tls_flags) and not all(tls_flags):
        print("meshgate edge: mutual TLS needs --xds-tls-cert, --xds-tls-key and --xds-ca together", file=sys.stderr)
        return 2
    if args.xds_server_name and not all(tls_flags):
        print("meshgate edge: --xds-server-name is for mutual TLS (--xds-tls-cert, --xds-tls-key, --xds-ca)", file=sys.stderr)
        return 2
    options = EdgeOptions(
        xds_address=args.xds_address, address=args.address,
        metrics_address=None if args.metrics_address == "off" else args.metrics_address,
        node_id=args.node_id, replay_cache_size=args.replay_cache_size, redis_url=args.redis_url,
        xds_tls=tls_flags if all(tls_flags) else None, xds_server_name=args.xds_server_name)
    try:
        options.xds_credentials()  # the files are readable now, or say which is not
    except OSError as exc:
        print(f"meshgate edge: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(options))


def cmd_schema(args: argparse.Namespace) -> int:
    from meshgate.api.schema import json_schemas

    schemas = json_schemas()
    if args.kind:
        wanted = {k: v for k, v in schemas.items() if k == args.kind or k.rsplit("/", 1)[-1] == args.kind}
        if not wanted:
            print(f"unknown kind {args.kind!r}; known: {', '.join(schemas)}", file=sys.stderr)
            return 1
        schemas = wanted
    print(json.dumps(schemas, indent=2))
    return 0


def cmd_crds(args: argparse.Namespace) -> int:
    import yaml

    from meshgate.api.crds import crds, rbac

    docs = crds()
    if args.command == "rbac":
        docs = rbac(args.namespace, args.name)
    elif args.rbac:
        docs += rbac(args.namespace)
    print(yaml.safe_dump_all(docs, sort_keys=False, width=120), end="")
    return 0


COMMANDS = {
    "crds": cmd_crds,
    "rbac": cmd_crds,
    "validate": cmd_validate,
    "translate": cmd_translate,
    "run": cmd_run,
    "xds": cmd_xds,
    "bootstrap": cmd_bootstrap,
    "schema": cmd_schema,
    "edge": cmd_edge,
}


def main(argv: list[str] | None = None) -> int:
    from meshgate.errors import MeshgateError

    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MeshgateError as exc:
        print(f"meshgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
