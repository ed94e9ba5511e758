"""Prometheus metrics: one registry per process, an HTTP endpoint, and a gRPC server interceptor."""

from __future__ import annotations

import time

import grpc
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
UP = Gauge("ccmsec_service_up", "1 while the service is serving", ["service", "node"], registry=REGISTRY)


def serve_metrics(host: str, port: int):
    """Start the /metrics endpoint in a daemon thread (port 0 = off)."""
    if port:
        return start_http_server(port, addr=host, registry=REGISTRY)
    return None


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every unary call; other call types are passed through untouched."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        inner = handler.unary_unary
        requests_ok = GRPC_REQUESTS.labels(method, "OK")
        latency = GRPC_LATENCY.labels(method)

        async def behaviour(request, context):
            start = time.perf_counter()
            try:
                reply = await inner(request, context)
            except BaseException:
                code = context.code() if hasattr(context, "code") else None
                GRPC_REQUESTS.labels(method, getattr(code, "name", "UNKNOWN") or "UNKNOWN").inc()
                raise
            latency.observe(time.perf_counter() - start)
            requests_ok.inc()
            return reply

        wrapped = grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = wrapped
        return wrapped
