"""Fuzzing parse_ctl / parse_sgn: any bytes give a parsed object or a clean CtlFormatError,
never another exception, in bounded time; a parsed-but-mutated file never verifies."""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ccmsec.formats.ctl import (
    CtlFormatError,
    CtlSignatureError,
    Role,
    build_ctl,
    format_ctl,
    parse_ctl,
    record_from_certificate,
    verify_ctl,
)
from ccmsec.formats.sgn import SignatureError, parse_sgn, sign_file, verify_sgn
from ccmsec.pki.ca import create_ca, issue_with_new_key, name
from ccmsec.pki.tokens import FileSigner

TS = 1_700_000_000
FUZZ = settings(max_examples=250, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def samples():
    ca = create_ca(name("Fuzz CA"))
    token = FileSigner.from_issued(issue_with_new_key(ca, name("SAST-fuzz"), "rsa1024"))
    tftp = FileSigner.from_issued(issue_with_new_key(ca, name("tftp"), "rsa1024"))
    ctl = build_ctl([record_from_certificate(token.certificate, Role.TOKEN),
                     record_from_certificate(tftp.certificate, Role.TFTP, "tftp", "127.0.0.1")],
                    token, TS)
    sgn = sign_file(b"<device><deviceSecurityMode>2</deviceSecurityMode></device>",
                    "SEP0011223344AA.cnf.xml.sgn", tftp, TS)
    return {"ctl": ctl, "sgn": sgn, "tftp_cert": tftp.certificate}


def _mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, position, value in edits:
        if not out:
            break
        at = position % len(out)
        if kind == 0:
            out[at] = value
        elif kind == 1:
            out.insert(at, value)
        elif kind == 2:
            del out[at]
        else:
            del out[at:]
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)),
                 min_size=1, max_size=4)


@FUZZ
@given(st.binary(max_size=3000))
def test_parse_ctl_random_bytes(data):
    try:
        ctl = parse_ctl(data)
    except CtlFormatError:
        return
    format_ctl(ctl)


@FUZZ
@given(st.binary(max_size=3000))
def test_parse_sgn_random_bytes(data):
    try:
        parse_sgn(data)
    except CtlFormatError:
        return


@FUZZ
@given(edits=EDITS)
def test_parse_ctl_mutated_valid_file(samples, edits):
    data = _mutate(samples["ctl"], edits)
    try:
        ctl = parse_ctl(data)
    except CtlFormatError:
        return
    format_ctl(ctl)
    if data != samples["ctl"]:
        with pytest.raises(CtlSignatureError):
            verify_ctl(ctl)


@FUZZ
@given(edits=EDITS)
def test_parse_sgn_mutated_valid_file(samples, edits):
    data = _mutate(samples["sgn"], edits)
    try:
        signed = parse_sgn(data)
    except CtlFormatError:
        return
    if data != samples["sgn"]:
        with pytest.raises(SignatureError):
            verify_sgn(signed, samples["tftp_cert"])
