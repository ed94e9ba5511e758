"""Prometheus metrics: one registry per process and an HTTP endpoint (gRPC calls are counted by
the wrappers of `ccmsec.runtime.authz`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()

GRPC_REQUESTS = Counter(
    "ccmsec_grpc_requests_total", "gRPC requests handled", ["method", "code"], registry=REGISTRY
)
GRPC_LATENCY = Histogram(
    "ccmsec_grpc_request_seconds", "gRPC request latency", ["method"], registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
EVENTS_HANDLED = Counter(
    "ccmsec_events_handled_total", "bus events handled", ["kind", "outcome"], registry=REGISTRY
)
GRPC_DENIED = Counter(
    "ccmsec_grpc_denied_total", "gRPC calls refused by the authorization policy", ["method", "caller_role"],
    registry=REGISTRY,
)
EVENTS_REFUSED = Counter(
    "ccmsec_events_refused_total", "bus events dropped: publisher not allowed to send that kind",
    ["kind", "publisher"], registry=REGISTRY,
)
UP = Gauge("ccmsec_service_up", "1 while the service is serving", ["service", "node"], registry=REGISTRY)


def serve_metrics(host: str, port: int):
    """Start the /metrics endpoint in a daemon thread (port 0 = off)."""
    if port:
        return start_http_server(port, addr=host, registry=REGISTRY)
    return None
