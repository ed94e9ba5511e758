"""Prometheus metrics: one registry per process, its families, and the HTTP endpoint.

Every family a ccmsec service exports is declared here, once, with its labels — the vocabulary
that `deploy/monitoring/` (dashboard and alert rules) is written against, and that
tests/e2e/test_monitoring.py checks the running services really export.

Conventions (https://prometheus.io/docs/practices/naming/): `ccmsec_` prefix, base units
(seconds, bytes), `_total` on counters, `_timestamp_seconds` for points in time, labels with a
bounded set of values (rule IDs, kinds, states — never device names or free text).

Three ways a value gets here:
- counters and histograms are updated where the thing happens (a registration, a TFTP transfer);
- gauges that mirror in-memory state are read at scrape time by a `sampler` — a function the
  service registers that returns the current samples (read in the HTTP thread: samplers only read);
- gauges that need I/O (the database, the bus) are set by the service's periodic
  `sample_metrics()` (`Service`, every `metrics_interval` seconds).

gRPC calls are counted and timed by the wrappers of `ccmsec.runtime.authz`; the administration
API's requests by its access-log middleware. The process (CPU, memory, file descriptors) and
Python (version, garbage collector) collectors are on.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger("ccmsec.metrics")

REGISTRY = CollectorRegistry()
# process_* (CPU seconds, resident memory, open fds, start time) and python_* (version, gc).
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30, 120)

# --- service and gRPC -------------------------------------------------------------------------
UP = Gauge("ccmsec_service_up", "1 while the service is serving", ["service", "node"], registry=REGISTRY)
GRPC_REQUESTS = Counter(
    "ccmsec_grpc_requests_total", "gRPC requests handled, by final status code", ["method", "code"],
    registry=REGISTRY,
)
GRPC_LATENCY = Histogram(
    "ccmsec_grpc_request_seconds",
    "gRPC request latency (successful and failed calls; a streaming call until its stream ends)",
    ["method"], registry=REGISTRY, buckets=_LATENCY_BUCKETS,
)
GRPC_DENIED = Counter(
    "ccmsec_grpc_denied_total", "gRPC calls refused by the authorization policy", ["method", "caller_role"],
    registry=REGISTRY,
)

# --- event bus --------------------------------------------------------------------------------
EVENTS_HANDLED = Counter(
    "ccmsec_events_handled_total", "bus events handled", ["kind", "outcome"], registry=REGISTRY
)
EVENTS_REFUSED = Counter(
    "ccmsec_events_refused_total", "bus events dropped: publisher not allowed to send that kind",
    ["kind", "publisher"], registry=REGISTRY,
)
EVENT_LAG = Histogram(
    "ccmsec_event_lag_seconds", "time from an event's publication to the end of its handling here",
    ["kind"], registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60, 300),
)
EVENTS_PENDING = Gauge(
    "ccmsec_event_bus_pending", "events on the stream this service's consumers have not acknowledged yet",
    ["consumer"], registry=REGISTRY,
)
BUS_CONNECTED = Gauge(
    "ccmsec_event_bus_connected", "1 while connected to NATS", registry=REGISTRY,
)
# The transactional outbox (events written with their database change, published after): every
# service's OutboxRelay (ccmsec/runtime/outbox.py) sets OUTBOX_DEPTH.labels(role) to its rows not yet
# acknowledged by JetStream.
OUTBOX_DEPTH = Gauge(
    "ccmsec_outbox_depth", "events written to the outbox and not yet published", ["service"],
    registry=REGISTRY,
)

# --- phones and calls (callmanager, srst) -----------------------------------------------------
REGISTRATIONS = Counter(
    "ccmsec_phone_registrations_total", "phone registrations accepted", ["node", "mode"], registry=REGISTRY,
)
REGISTRATION_REFUSALS = Counter(
    "ccmsec_phone_registration_refusals_total", "phone registrations refused, by the rule that refused",
    ["node", "rule"], registry=REGISTRY,
)
RESETS_SENT = Counter(
    "ccmsec_phone_resets_sent_total", "Reset/Restart messages sent to registered phones", ["node", "type"],
    registry=REGISTRY,
)

# --- TFTP (tftp-signer) -----------------------------------------------------------------------
TFTP_TRANSFERS = Counter(
    "ccmsec_tftp_transfers_total", "TFTP read requests finished, by kind of file and outcome",
    ["kind", "outcome"], registry=REGISTRY,
)
TFTP_ERRORS = Counter(
    "ccmsec_tftp_errors_total", "TFTP requests answered with an error or that failed, by kind of file",
    ["kind", "error"], registry=REGISTRY,
)
TFTP_BYTES = Counter(
    "ccmsec_tftp_sent_bytes_total", "file bytes of completed TFTP transfers", ["kind"], registry=REGISTRY,
)
TFTP_REQUESTS_REFUSED = Counter(
    "ccmsec_tftp_requests_refused_total", "TFTP read requests refused before a transfer: per_source (the "
    "client address's share of transfers is used up) or undeliverable (from port 0 or the unspecified "
    "address: dropped unanswered)", ["reason"], registry=REGISTRY,
)

# --- CAPF -------------------------------------------------------------------------------------
CAPF_SESSIONS = Counter(
    "ccmsec_capf_sessions_total", "CAPF phone sessions ended, by outcome", ["outcome"], registry=REGISTRY,
)
CAPF_OPERATIONS = Gauge(
    "ccmsec_capf_operations", "CAPF operations in the database, by operation and state",
    ["operation", "state"], registry=REGISTRY,
)
CAPF_CERTIFICATES = Gauge(
    "ccmsec_capf_certificate_records", "CAPF certificate records (issued, deleted, ...), by outcome",
    ["operation", "outcome"], registry=REGISTRY,
)

# --- trust: CTL and certificates --------------------------------------------------------------
CTL_VERSION = Gauge(
    "ccmsec_ctl_version", "version of the current CTL file (0 while no CTL exists)", ["node"],
    registry=REGISTRY,
)
CLUSTER_MIXED = Gauge(
    "ccmsec_cluster_mixed_mode", "1 when the cluster runs in mixed (secure) mode", ["node"], registry=REGISTRY,
)
CERT_EXPIRY = Gauge(
    "ccmsec_certificate_expiry_timestamp_seconds",
    "notAfter of a certificate this service holds or issued (kind: identity, server, capf, token, lsc)",
    ["kind", "name"], registry=REGISTRY,
)
LSC_EXPIRING = Gauge(
    "ccmsec_lsc_expiring", "issued LSCs still valid that expire within the window", ["within"],
    registry=REGISTRY,
)

# --- media: call keys (keymanager) -------------------------------------------------------------
CALL_KEYS = Counter(
    "ccmsec_call_keys_total",
    "SRTP key sets asked of keymanager: issued (by suite), refused (ENC-4: no suite both ends have) "
    "or invalid (a malformed request)", ["suite", "outcome"], registry=REGISTRY,
)

# --- administration API -----------------------------------------------------------------------
ADMIN_REQUESTS = Counter(
    "ccmsec_admin_api_requests_total", "administration API requests, by route template and status",
    ["method", "route", "status"], registry=REGISTRY,
)
ADMIN_LATENCY = Histogram(
    "ccmsec_admin_api_request_seconds", "administration API request latency", ["method", "route"],
    registry=REGISTRY, buckets=_LATENCY_BUCKETS,
)


# --- scrape-time samplers ---------------------------------------------------------------------
Sampler = Callable[[], Iterable[tuple[tuple[str, ...], float]]]


class _Sampled:
    """A gauge family whose samples come from functions at scrape time."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]):
        self.name, self.doc, self.labels = name, doc, labels
        self.samplers: list[Sampler] = []
        self._lock = threading.Lock()

    def collect(self):
        family = GaugeMetricFamily(self.name, self.doc, labels=list(self.labels))
        with self._lock:
            samplers = list(self.samplers)
        for sampler in samplers:
            try:
                for values, value in sampler():
                    family.add_metric(list(values), value)
            except Exception:  # a scrape must never fail because one sampler did
                log.debug("metrics sampler failed", exc_info=True)
        yield family

    def describe(self):
        yield GaugeMetricFamily(self.name, self.doc, labels=list(self.labels))


def _sampled(name: str, doc: str, labels: tuple[str, ...]) -> _Sampled:
    family = _Sampled(name, doc, labels)
    REGISTRY.register(family)
    return family


PHONES_REGISTERED = _sampled("ccmsec_phones_registered",
                             "phones registered on this node, by effective security mode", ("node", "mode"))
RESETS_IN_FLIGHT = _sampled("ccmsec_phone_resets_in_flight",
                            "phones sent a Reset that have not registered again yet", ("node",))
CALLS_IN_PROGRESS = _sampled("ccmsec_calls_in_progress",
                             "calls in progress on this node, by shown security status", ("node", "security"))
SIMULATED_PHONES = _sampled("ccmsec_simulated_phones",
                            "phone-sim's simulated phones, by boot state (off, downloading-ctl, ..., "
                            "registered, failed)", ("node", "state"))
GATEWAY_CONNECTIONS = _sampled("ccmsec_gateway_connections",
                               "media connections open on this gateway, by media protection (rtp, srtp)",
                               ("gateway", "media"))


def add_sampler(family: _Sampled, sampler: Sampler) -> None:
    with family._lock:
        family.samplers.append(sampler)


def remove_sampler(family: _Sampled, sampler: Sampler) -> None:
    with family._lock:
        if sampler in family.samplers:
            family.samplers.remove(sampler)


def set_certificate_expiry(kind: str, name: str, not_after: _dt.datetime) -> None:
    if not_after.tzinfo is None:
        not_after = not_after.replace(tzinfo=_dt.timezone.utc)
    CERT_EXPIRY.labels(kind, name).set(not_after.timestamp())


def serve_metrics(host: str, port: int):
    """Start the /metrics endpoint in a daemon thread (port 0 = off)."""
    if port:
        return start_http_server(port, addr=host, registry=REGISTRY)
    return None
