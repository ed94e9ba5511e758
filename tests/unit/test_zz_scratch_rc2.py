from tests.unit.calls_harness import Harness
from tests.unit.test_calls_core import barge_by_xena, other_party_setup, call_with, A, B, XENA
import pytest

def leftovers(h):
    return ({cid: list(cl.channels) for cid, cl in h.agent.calls.items()},
            h.resources.open_streams, {n: dict(p.channels) for n, p in h.phones.items() if p.channels})

@pytest.mark.parametrize("cb", [False, True])
@pytest.mark.parametrize("seq", ["ax", "xa", "bx", "axres"])
def test_seq(cb, seq):
    h = Harness()
    pa, pb, px, call = barge_by_xena(h, cbarge=cb)
    pa.hold(); h.pump()
    if seq == "ax":
        pa.hang_up(); h.pump()
    elif seq == "xa":
        px.hang_up(); h.pump(); pa.hang_up(); h.pump()
    elif seq == "bx":
        px.hold(); h.pump(); pb.hang_up(); h.pump()
    elif seq == "axres":
        px.hold(); h.pump(); pa.resume(); h.pump(); pa.hang_up(); h.pump(); px.resume(); h.pump()
    for p in (pa, pb, px):
        while p.calls and any(c.state.name in ("CONNECTED","HOLD","RING_IN") for c in p.calls.values()):
            try: p.hang_up(); h.pump()
            except Exception as e: print(e); break
    print(seq, cb, leftovers(h), {n: [ (c.state.name) for c in p.calls.values()] for n,p in h.phones.items()})
    assert leftovers(h) == ({}, {}, {})
