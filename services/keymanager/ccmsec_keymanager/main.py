"""Entry point of the keymanager service: the key manager function of call control.

For every secure call it generates two independent sets of SRTP master key and salt (ENC-4), one
for A→B and one for B→A, from the operating system's CSPRNG (`secrets`), for the preferred suite
both ends support. It keeps nothing: the reply is the only copy, so no key outlives the call in
this service, and no key is ever logged (ENC-5) — log lines name the call and the suite only.
Who may ask is decided by the cluster's authorization policy (call control only).
"""

from __future__ import annotations

import grpc

from ccmsec.media.keys import to_proto
from ccmsec.runtime.metrics import CALL_KEYS
from ccmsec.media.srtp import DEFAULT_SUITE, MasterKey, SrtpSuite, common_suite
from ccmsec.runtime.service import Service, run_service
from ccmsec.runtime.servicer import StatusServicerMixin
from ccmsec_proto import common_pb2, keymanager_pb2, keymanager_pb2_grpc
from ccmsec.textsafe import bounded

MAX_CALLS_PER_REQUEST = 64   # one reply's pairs: call control's pool asks ahead in batches
MAX_CALL_ID = 128


class KeyRequestError(ValueError):
    pass


def _suites(values, which: str) -> set[SrtpSuite]:
    if not values:
        return {DEFAULT_SUITE}
    try:
        return {SrtpSuite.parse(v) for v in values}
    except ValueError as exc:
        raise KeyRequestError(f"{which}: {exc}") from None


def choose_suite(request: keymanager_pb2.CallKeysRequest) -> SrtpSuite:
    """The requested suite if both ends have it; else the preferred common one."""
    caller = _suites(request.caller_suites, "caller_suites")
    callee = _suites(request.callee_suites, "callee_suites")
    if request.suite != common_pb2.CRYPTO_SUITE_NONE:
        try:
            wanted = SrtpSuite.parse(request.suite)
        except ValueError as exc:
            raise KeyRequestError(str(exc)) from None
        if (request.caller_suites and wanted not in caller) or (request.callee_suites and wanted not in callee):
            raise KeyRequestError(f"{wanted.name} is not supported by both ends")
        return wanted
    suite = common_suite(caller, callee)
    if suite is None:
        raise KeyRequestError("the two ends share no SRTP suite ("
                              f"caller: {', '.join(sorted(s.name for s in caller))}; "
                              f"callee: {', '.join(sorted(s.name for s in callee))})")
    return suite


class KeyManagerServicer(StatusServicerMixin, keymanager_pb2_grpc.KeyManagerServicer):
    async def GenerateCallKeys(self, request, context):  # noqa: N802
        if not request.call_id or len(request.call_id) > MAX_CALL_ID:
            CALL_KEYS.labels("none", "invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"call_id must be 1..{MAX_CALL_ID} characters")
        calls = request.calls or 1
        if calls > MAX_CALLS_PER_REQUEST:
            CALL_KEYS.labels("none", "invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"calls must be 1..{MAX_CALLS_PER_REQUEST} per request, not {calls}")
        try:
            suite = choose_suite(request)
        except KeyRequestError as exc:
            CALL_KEYS.labels("none", "refused").inc()
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, bounded(f"ENC-4: {exc}"))
        self.service.calls_keyed += calls
        CALL_KEYS.labels(suite.name, "issued").inc(calls)
        self.service.log.debug("call keyed", extra={"call_id": request.call_id, "suite": suite.name,
                                                    "calls": calls})

        def pair() -> keymanager_pb2.CallKeysReply:
            return keymanager_pb2.CallKeysReply(call_id=request.call_id,
                                                a_to_b=to_proto(MasterKey.generate(suite)),
                                                b_to_a=to_proto(MasterKey.generate(suite)))
        reply = pair()
        reply.more.extend(pair() for _ in range(calls - 1))
        return reply


class KeyManagerService(Service):
    role = "keymanager"

    def __init__(self, settings):
        super().__init__(settings)
        self.calls_keyed = 0

    def status_details(self) -> dict[str, str]:
        return {"calls_keyed": str(self.calls_keyed)}

    async def setup(self) -> None:
        for suite in SrtpSuite:  # every series from the start, so a rate is defined at once
            CALL_KEYS.labels(suite.name, "issued")
        CALL_KEYS.labels("none", "refused")
        CALL_KEYS.labels("none", "invalid")
        self.grpc.add(keymanager_pb2_grpc.add_KeyManagerServicer_to_server, KeyManagerServicer(self),
                      "ccmsec.v1.KeyManager")


def main() -> None:
    run_service(KeyManagerService)


if __name__ == "__main__":
    main()
