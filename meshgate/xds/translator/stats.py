"""Names Envoy's statistics are rooted at, chosen so its Prometheus output has bounded labels.

Envoy names a route's statistics `vhost.<virtual host name>.route.<route stat_prefix>.<stat>`
(requests by response code, `upstream_rq_time` histogram, retries, timeouts), and only for
routes that set `stat_prefix`. Its Prometheus output turns the two names into the labels
`envoy_virtual_host` and `envoy_route` with tag-extraction regexes that stop at the first `.`:
a dot in either name would end up in the metric *name* instead (a new metric per hostname), so
dots become `_`, as Envoy Gateway does for its virtual host names.

meshgate gives every Gateway API rule one `stat_prefix` (all the matches of a rule share it): the
number of series grows with the number of rules in the config, never with the traffic.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/stats#config-http-conn-man-stats-per-route
"""

from __future__ import annotations

from meshgate import ir


def virtual_host_name(name: str) -> str:
    """`default/edge/8080/www.example.com` -> `default/edge/8080/www_example_com`."""
    return name.replace(".", "_")


def route_stat_prefix(route: ir.Route) -> str:
    """The rule a route comes from: `httproute/default/app/rule/0/match/1` -> `httproute/default/app/rule/0`."""
    return route.name.rsplit("/match/", 1)[0].replace(".", "_")
