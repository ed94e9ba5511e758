"""Phone configuration file (SEP<MAC>.cnf.xml, XMLDefault.cnf.xml)."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccmsec.domain import CapfAuthMode, DeviceSecurityMode
from ccmsec.formats import cnfxml as c

CERT = bytes(range(256)) * 3


def full_config(**overrides) -> c.DeviceConfig:
    base = dict(
        device_name="SEP001122334455",
        model="Cisco 7970",
        security_mode=DeviceSecurityMode.ENCRYPTED,
        call_managers=(c.CallManagerMember("10.0.0.1"), c.CallManagerMember("10.0.0.2", 2000, 2443),
                       c.CallManagerMember("ccm3.example", 2100, 2543)),
        srst=c.SrstInfo("Enable", ("10.0.9.1", "10.0.9.2"), (2000, 2443), True, CERT),
        capf_auth_mode=CapfAuthMode.STRING,
        capf=c.CapfSettings("10.0.0.1", 3804, "install", "123456", "RSA", 2048, None),
        cert_hash="0123456789abcdef0123456789abcdef",
        encr_config=False,
        load_information="TERM70.7-0-1-0s",
        load_server="10.0.0.5",
        hardening=c.Hardening.all_off(),
    )
    base.update(overrides)
    return c.DeviceConfig(**base)


def test_round_trip_full_config():
    config = full_config()
    assert c.parse_cnf_xml(config.to_xml()) == config


def test_round_trip_minimal_config():
    config = c.DeviceConfig("SEPAABBCCDDEEFF", "Cisco 7960", call_managers=(c.CallManagerMember("h"),))
    assert c.parse_cnf_xml(config.to_xml()) == config


def test_to_xml_is_deterministic_and_uses_real_element_names():
    raw = full_config().to_xml()
    assert raw == full_config().to_xml()
    root = ET.fromstring(raw)
    assert root.tag == "device"
    assert root.findtext("deviceSecurityMode") == "3"
    members = root.findall("devicePool/callManagerGroup/members/member")
    assert [m.get("priority") for m in members] == ["0", "1", "2"]
    assert members[0].findtext("callManager/ports/ethernetPhonePort") == "2000"
    assert members[0].findtext("callManager/processNodeName") == "10.0.0.1"
    srst = root.find("devicePool/srstInfo")
    assert srst.findtext("srstOption") == "Enable" and srst.findtext("isSecure") == "true"
    assert srst.findtext("ipAddr1") == "10.0.9.1" and srst.findtext("port2") == "2443"
    assert root.findtext("capfList/capf/phonePort") == "3804"
    assert root.findtext("capfOperation/operation") == "install"
    assert root.findtext("capfAuthMode") == "1"
    assert root.findtext("loadInformation") == "TERM70.7-0-1-0s"


def test_dev4_hardening_reaches_the_config_file():
    """DEV-4, CHK-11: hardening settings (web, PC port, settings, GARP, voice VLAN, span to PC
    port) are in the file, in the phones' own 0/1 conventions."""
    hardened = ET.fromstring(full_config().to_xml()).find("vendorConfig")
    assert {e.tag: e.text for e in hardened} == {
        "webAccess": "1", "pcPort": "1", "settingsAccess": "0", "garp": "1", "voiceVlanAccess": "1",
        "spanToPCPort": "0",
    }
    open_ = ET.fromstring(full_config(hardening=c.Hardening()).to_xml()).find("vendorConfig")
    assert {e.tag: e.text for e in open_} == {
        "webAccess": "0", "pcPort": "0", "settingsAccess": "1", "garp": "0", "voiceVlanAccess": "0",
        "spanToPCPort": "0",  # factory default: no mirroring to the PC port
    }
    for flag in dataclasses.fields(c.Hardening):
        flipped = dataclasses.replace(c.Hardening(), **{flag.name: not flag.default})
        assert c.parse_cnf_xml(full_config(hardening=flipped).to_xml()).hardening == flipped
    spanning = ET.fromstring(full_config(hardening=c.Hardening(span_to_pc_port=True)).to_xml())
    assert spanning.find("vendorConfig/spanToPCPort").text == "1"
    # A file without vendorConfig means the factory behaviour.
    bare = full_config(hardening=c.Hardening()).to_xml()
    bare = bare[:bare.index(b"<vendorConfig>")] + bare[bare.index(b"</vendorConfig>") + 15:]
    assert c.parse_cnf_xml(bare).hardening == c.Hardening()


def test_cert6_srst_certificate_carried_in_config_file():
    """CERT-6: phones receive the SRST certificate inside their configuration file."""
    parsed = c.parse_cnf_xml(full_config().to_xml())
    assert parsed.srst.certificate == CERT
    bad = full_config().to_xml().replace(b"<srstCertificate>", b"<srstCertificate>!!")
    with pytest.raises(c.CnfXmlError, match="srstCertificate"):
        c.parse_cnf_xml(bad)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"device_name": "SEP0011"}, "deviceName"),
        ({"device_name": "sep001122334455"}, "deviceName"),
        ({"security_mode": 4}, "deviceSecurityMode"),
        ({"security_mode": 0}, "deviceSecurityMode"),
        ({"capf_auth_mode": 5}, "capfAuthMode"),
        ({"call_managers": ()}, "1 to 3"),
        ({"call_managers": (c.CallManagerMember("h"),) * 4}, "1 to 3"),
        ({"cert_hash": "xyz"}, "certHash"),
        ({"protocol": "MGCP"}, "deviceProtocol"),
    ],
)
def test_invalid_values_refused(overrides, needle):
    with pytest.raises(c.CnfXmlError, match=needle):
        full_config(**overrides)


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (lambda: c.CallManagerMember("h", 0), "port"),
        (lambda: c.CallManagerMember("h", 2000, 70000), "port"),
        (lambda: c.CallManagerMember(""), "processNodeName"),
        (lambda: c.SrstInfo("Maybe"), "srstOption"),
        (lambda: c.SrstInfo(addresses=("a", "b", "c", "d")), "three"),
        (lambda: c.CapfSettings("h", operation="explode"), "capfOperation"),
        (lambda: c.CapfSettings("h", auth_string="12ab"), "authString"),
        (lambda: c.CapfSettings("h", key_type="DSA"), "keyType"),
        (lambda: c.CapfSettings("h", key_size=1000), "keySize"),
        (lambda: c.CapfSettings("h", curve="P-192"), "curve"),
    ],
)
def test_invalid_parts_refused(build, needle):
    with pytest.raises(c.CnfXmlError, match=needle):
        build()


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda x: x.replace(b"<deviceSecurityMode>3<", b"<deviceSecurityMode>9<"), "deviceSecurityMode"),
        (lambda x: x.replace(b"<deviceSecurityMode>3<", b"<deviceSecurityMode>x<"), "not a number"),
        (lambda x: x.replace(b"<encrConfig>false<", b"<encrConfig>maybe<"), "true or false"),
        (lambda x: x.replace(b"<webAccess>1<", b"<webAccess>7<"), "webAccess"),
        (lambda x: x.replace(b"<device>", b"<phone>").replace(b"</device>", b"</phone>"), "root element"),
        (lambda x: x[:-20], "well-formed"),
        (lambda x: x.replace(b"<deviceName>SEP001122334455</deviceName>", b""), "deviceName"),
        (lambda x: x.replace(b'priority="1"', b'priority="x"'), "priority"),
    ],
)
def test_parse_rejects_bad_documents(mutate, needle):
    with pytest.raises(c.CnfXmlError, match=needle):
        c.parse_cnf_xml(mutate(full_config().to_xml()))


def test_parse_refuses_doctype_and_entities():
    bomb = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            b"<device>&b;</device>")
    with pytest.raises(c.CnfXmlError, match="DOCTYPE"):
        c.parse_cnf_xml(bomb)
    external = b'<!doctype device SYSTEM "file:///etc/passwd"><device/>'
    with pytest.raises(c.CnfXmlError, match="DOCTYPE"):
        c.parse_cnf_xml(external)


@pytest.mark.parametrize("encode", [lambda t: t.encode("utf-16-le"), lambda t: b"\xff\xfe" + t.encode("utf-16-le"),
                                    lambda t: b"\xfe\xff" + t.encode("utf-16-be")], ids=["le", "le-bom", "be-bom"])
def test_parse_refuses_doctype_hidden_by_a_wide_encoding(encode):
    """DEV-4: the phone's config parser refuses entity declarations in any encoding: a UTF-16 file
    has no ASCII `<!DOCTYPE` bytes, and must not get its entities expanded into the config."""
    members = ('<callManagerGroup><members><member priority="0"><callManager>'
               "<processNodeName>&x;</processNodeName></callManager></member></members></callManagerGroup>")
    text = (f'<?xml version="1.0" encoding="UTF-16"?>'
            f'<!DOCTYPE Default [<!ENTITY x "evil.example">]><Default>{members}</Default>')
    data = encode(text)
    assert b"DOCTYPE" not in data  # the byte scan alone cannot see it
    with pytest.raises(c.CnfXmlError, match="DOCTYPE"):
        c.parse_default_cnf_xml(data)


def test_parse_refuses_oversized_input():
    with pytest.raises(c.CnfXmlError, match="exceeds"):
        c.parse_cnf_xml(b"<device>" + b" " * c.MAX_CNF_XML + b"</device>")


def test_default_config_round_trip():
    default = c.DefaultConfig((c.CallManagerMember("10.0.0.1"),), (("Cisco 7970", "TERM70.7-0-1-0s"),))
    raw = default.to_xml()
    assert ET.fromstring(raw).tag == "Default"
    assert c.parse_default_cnf_xml(raw) == default
    assert c.DefaultConfig.FILENAME == "XMLDefault.cnf.xml"
    with pytest.raises(c.CnfXmlError, match="root element"):
        c.parse_default_cnf_xml(full_config().to_xml())


def test_filename():
    assert full_config().filename == "SEP001122334455.cnf.xml"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_parse_any_bytes(raw):
    try:
        c.parse_cnf_xml(raw)
    except c.CnfXmlError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_documents(data):
    raw = bytearray(full_config().to_xml())
    for _ in range(data.draw(st.integers(1, 5))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    try:
        c.parse_cnf_xml(bytes(raw))
    except c.CnfXmlError:
        pass
