"""The conference bridge's mixer (issue 10, ad hoc conference): each party hears the sum of the
others, never itself; sums clip to 16 bits; queues are bounded; bad frames and too many parties
are refused, not mixed."""

from __future__ import annotations

import array

import pytest

from ccmsec.media.mixer import FRAME_BYTES, MAX_PARTIES, Mixer, MixerError


def frame(value: int) -> bytes:
    return array.array("h", [value] * 160).tobytes()


def values(pcm: bytes) -> set[int]:
    samples = array.array("h")
    samples.frombytes(pcm)
    return set(samples)


def test_each_party_hears_everybody_else_and_never_itself():
    m = Mixer()
    for party in "abc":
        m.add(party)
    m.push("a", frame(100))
    m.push("b", frame(20))
    m.push("c", frame(3))
    out = m.tick()
    assert values(out["a"]) == {23} and values(out["b"]) == {103} and values(out["c"]) == {120}
    # nothing queued: silence for everyone, and a silent party adds nothing
    assert all(values(pcm) == {0} for pcm in m.tick().values())
    m.push("a", frame(7))
    out = m.tick()
    assert values(out["a"]) == {0} and values(out["b"]) == {7} == values(out["c"])


def test_sums_clip_to_16_bits():
    m = Mixer()
    for party in "abc":
        m.add(party)
    m.push("a", frame(30000))
    m.push("b", frame(30000))
    m.push("c", frame(-30000))
    out = m.tick()
    assert values(out["c"]) == {32767} and values(out["a"]) == {0}
    m.push("a", frame(-30000))
    m.push("b", frame(-30000))
    assert values(m.tick()["c"]) == {-32768}


def test_queues_are_bounded_and_bad_frames_refused():
    m = Mixer(max_queue=3)
    m.add("a")
    m.add("b")
    for v in range(1, 6):
        m.push("a", frame(v))
    assert m.dropped == 2                          # the oldest two went
    assert [values(m.tick()["b"]) for _ in range(3)] == [{3}, {4}, {5}]
    m.push("a", b"\x00" * (FRAME_BYTES - 1))      # not 20 ms of 16-bit PCM
    m.push("zzz", frame(1))                        # not in the mix
    assert m.malformed == 1 and values(m.tick()["b"]) == {0}
    m.remove("a")
    assert m.parties == ["b"]
    with pytest.raises(MixerError):
        Mixer(max_queue=0)
    big = Mixer()
    for i in range(MAX_PARTIES):
        big.add(i)
    with pytest.raises(MixerError, match="at most"):
        big.add("one too many")
