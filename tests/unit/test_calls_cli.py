"""`ccmsec calls watch --table`: the live table follows the watch's events — calls appear when
created, change in place, disappear when ended — with each call's status and what each leg shows."""

from __future__ import annotations

from ccmsec.cli.calls import LiveCalls, event_line
from ccmsec_proto import callmanager_pb2 as pb


def event(kind: str, call_id: int, status: str, shown: str, phase: str = "connected"):
    legs = [pb.CallLeg(device=d, dn=n, state=phase, shown=shown) for d, n in (("SEPA", "1001"), ("SEPB", "1002"))]
    return pb.CallEventMessage(kind=kind, at_unix_ms=1_700_000_000_000, call=pb.ActiveCall(
        id=call_id, calling="1001", called="1002", phase=phase, status=status, rule="CALL-1", legs=legs,
        codec="g711u"))


def test_the_live_table_follows_created_updated_and_ended():
    live = LiveCalls()
    live.apply(event("existing", 7, "authenticated", "shield"))
    live.apply(event("created", 8, "unknown", "none", phase="setup"))
    table = live.render("created call 8")
    assert "2 call(s) in progress" in table and "last: created call 8" in table
    assert "authenticated" in table and "SEPA(1001 connected shield)" in table
    live.apply(event("updated", 8, "encrypted", "lock"))
    table = live.render()
    assert table.count("\n") == 3 and "encrypted" in table and "SEPB(1002 connected lock)" in table
    live.apply(event("ended", 7, "authenticated", "shield"))
    live.apply(event("refused", 8, "encrypted", "lock"))   # a refused barge: the call stays as it was
    assert list(live.calls) == [8]
    live.apply(event("ended", 8, "encrypted", "lock"))
    assert live.render().endswith("no calls")
    assert "status encrypted [CALL-1]" in event_line(event("updated", 8, "encrypted", "lock"))
