"""The domain vocabulary (ccmsec/domain.py): every spelling of each concept round-trips, tolerant
parsing accepts what people and other layers write, and bad input is one clear DomainError."""

from __future__ import annotations

import pytest

from ccmsec.domain import (
    CallSecurityStatus,
    CapfAuthMode,
    CapfOperation,
    CertificateKind,
    ClusterMode,
    DeviceSecurityMode,
    DomainError,
    ServiceRole,
    Word,
)
from ccmsec_proto import capf_pb2, common_pb2

ALL = (DeviceSecurityMode, ClusterMode, ServiceRole, CapfOperation, CapfAuthMode, CertificateKind,
       CallSecurityStatus)


@pytest.mark.parametrize("cls", ALL)
def test_every_member_parses_from_its_value_name_and_any_case(cls: type[Word]) -> None:
    for member in cls:
        assert cls.parse(member.value) is member
        assert cls.parse(member) is member
        assert cls.parse(member.name) is member
        assert cls.parse(f"  {member.value.upper()} ") is member
        assert cls.parse(member.value.replace("-", "_")) is member
        assert member == member.value  # a member is its canonical text (database, JSON)
        assert f"{member}" == member.value


@pytest.mark.parametrize("cls", ALL)
def test_bad_input_is_one_clear_error_naming_the_concept(cls: type[Word]) -> None:
    for bad in ("", "bogus", "x" * 10_000, None, 3, b"mixed", ["mixed"]):
        with pytest.raises(DomainError) as info:
            cls.parse(bad)
        message = str(info.value)
        assert cls.concept() in message
        assert all(choice in message for choice in cls.choices())
        assert len(message) < 300  # a huge value is not echoed back whole


def test_device_security_mode_spellings_dev1() -> None:
    """DEV-1: the three modes and their proto / cnf.xml numbers."""
    assert DeviceSecurityMode.choices() == ("non-secure", "authenticated", "encrypted")
    assert DeviceSecurityMode.NON_SECURE.to_proto() == common_pb2.NON_SECURE
    assert DeviceSecurityMode.ENCRYPTED.to_proto() == common_pb2.ENCRYPTED
    assert [m.to_xml() for m in DeviceSecurityMode] == [1, 2, 3]
    for m in DeviceSecurityMode:
        assert DeviceSecurityMode.from_proto(m.to_proto()) is m
        assert DeviceSecurityMode.from_xml(m.to_xml()) is m
    assert DeviceSecurityMode.parse("NON_SECURE") is DeviceSecurityMode.NON_SECURE
    assert DeviceSecurityMode.parse("nonsecure") is DeviceSecurityMode.NON_SECURE
    with pytest.raises(DomainError):
        DeviceSecurityMode.from_proto(0)
    assert DeviceSecurityMode.from_proto(0, default=DeviceSecurityMode.NON_SECURE) \
        is DeviceSecurityMode.NON_SECURE
    with pytest.raises(DomainError, match="xml"):
        DeviceSecurityMode.from_xml(4)
    with pytest.raises(DomainError):
        DeviceSecurityMode.from_proto(True)  # a bool is not an enum number
    with pytest.raises(DomainError, match="no wire spelling"):
        DeviceSecurityMode.NON_SECURE.to_wire()


def test_effective_mode_mode3() -> None:
    """MODE-3: in a non-secure cluster every device is effectively non-secure."""
    assert DeviceSecurityMode.ENCRYPTED.effective("non-secure") is DeviceSecurityMode.NON_SECURE
    assert DeviceSecurityMode.ENCRYPTED.effective(ClusterMode.MIXED) is DeviceSecurityMode.ENCRYPTED
    assert not DeviceSecurityMode.NON_SECURE.is_secure and DeviceSecurityMode.AUTHENTICATED.is_secure


def test_cluster_mode_spellings_mode1() -> None:
    assert ClusterMode.choices() == ("non-secure", "mixed")
    assert ClusterMode.parse("CLUSTER_MIXED") is ClusterMode.MIXED
    assert ClusterMode.from_proto(common_pb2.CLUSTER_NON_SECURE) is ClusterMode.NON_SECURE
    assert ClusterMode.MIXED.to_proto() == common_pb2.CLUSTER_MIXED
    with pytest.raises(DomainError):
        ClusterMode.parse("authenticated")  # a device mode, not a cluster mode
    with pytest.raises(DomainError):
        ClusterMode.from_proto(7)


def test_capf_operation_and_auth_mode_spellings() -> None:
    for op in CapfOperation:
        assert CapfOperation.from_proto(op.to_proto()) is op
    assert CapfOperation.parse("CAPF_TROUBLESHOOT") is CapfOperation.TROUBLESHOOT
    assert CapfOperation.INSTALL.issues_certificate and not CapfOperation.DELETE.issues_certificate
    for mode in CapfAuthMode:
        assert CapfAuthMode.from_proto(mode.to_proto()) is mode
    assert CapfAuthMode.parse("CAPF_AUTH_LSC_THEN_MIC") is CapfAuthMode.LSC_THEN_MIC
    assert CapfAuthMode.LSC.to_proto() == capf_pb2.CAPF_AUTH_LSC
    # cnf.xml has no "LSC only": lsc is written as 3, and 3 reads as lsc-then-mic
    assert CapfAuthMode.LSC.to_xml() == CapfAuthMode.LSC_THEN_MIC.to_xml() == 3
    assert CapfAuthMode.from_xml(3) is CapfAuthMode.LSC_THEN_MIC
    assert CapfAuthMode.from_xml(1) is CapfAuthMode.STRING
    # CAPF wire auth types (password 1, no password 2, LSC 3, MIC 4)
    assert [CapfAuthMode.parse(m).to_wire() for m in ("string", "null", "lsc", "mic")] == [1, 2, 3, 4]
    assert CapfAuthMode.LSC_THEN_MIC.accepted_certificates == {CertificateKind.LSC, CertificateKind.MIC}
    assert CapfAuthMode.STRING.accepted_certificates == frozenset()


def test_certificate_kind_spellings_cert2() -> None:
    assert CertificateKind.parse("lsc") is CertificateKind.LSC
    assert CertificateKind.MIC.to_wire() == 2 and CertificateKind.from_wire(1) is CertificateKind.LSC
    assert CertificateKind.from_proto(common_pb2.ROLE_MIC) is CertificateKind.MIC
    with pytest.raises(DomainError):
        CertificateKind.from_proto(common_pb2.ROLE_CAPF)
    assert CertificateKind.parse_optional("") is None


def test_call_security_status_call1() -> None:
    """CALL-1: a call is as secure as its weakest leg; SCCP numbers 0..3."""
    assert [s.to_wire() for s in CallSecurityStatus] == [0, 1, 2, 3]
    assert CallSecurityStatus.weakest(["encrypted", CallSecurityStatus.AUTHENTICATED]) \
        is CallSecurityStatus.AUTHENTICATED
    assert DeviceSecurityMode.NON_SECURE.call_status is CallSecurityStatus.NOT_AUTHENTICATED
    assert DeviceSecurityMode.ENCRYPTED.call_status is CallSecurityStatus.ENCRYPTED
    assert CallSecurityStatus.parse("not authenticated") is CallSecurityStatus.NOT_AUTHENTICATED
    with pytest.raises(DomainError):
        CallSecurityStatus.weakest([])


def test_service_roles_match_the_topology() -> None:
    from ccmsec.cluster.topology import SERVICES

    assert {r.value for r in ServiceRole} == {s.role for s in SERVICES}
    for s in SERVICES:
        role = ServiceRole.parse(s.role)
        assert role.package == s.package and role.executable == s.executable
