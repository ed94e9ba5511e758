"""Extension mobility from the phone (issue 10, DEV-2): what the phone and call control say to
each other, sans-IO. The user logs in at the phone — user id and PIN, as on a real phone's
extension-mobility service — and the request travels in DeviceToUserData (0x002E) on the phone's
own registered connection, so the device that asks is the one that registered (over TLS for
authenticated and encrypted phones); the answer comes back in UserToDeviceData (0x011E). Data is
a small XML document:

    phone → call control   <emLogin user="alice" pin="1234"/>   or   <emLogout/>
    call control → phone   <emResult ok="1" action="login" user="alice">Logged in: 5190</emResult>

The device keeps its own security mode whoever logs in (DEV-2): mobility carries a line, never
a status. On a non-secure phone the PIN crosses the network in clear text, as on the era's
phones over HTTP; on authenticated and encrypted phones it is inside the TLS connection.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ccmsec.wire.sccp_userdata import DeviceToUserData, UserToDeviceData

EM_APPLICATION_ID = 0x454D   # "EM"
USER_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
PIN_RE = re.compile(r"[0-9]{4,16}")


class MobilityRequestError(ValueError):
    """Data that is not an extension-mobility request this side understands."""


@dataclass(frozen=True)
class LoginRequest:
    user: str
    pin: str


@dataclass(frozen=True)
class LogoutRequest:
    pass


@dataclass(frozen=True)
class MobilityResult:
    ok: bool
    action: str      # "login" | "logout"
    user: str
    text: str


def _element(data: bytes) -> ET.Element:
    if len(data) > 2000 or b"<!" in data:   # no DTD, no entities: a fixed, tiny vocabulary
        raise MobilityRequestError("not an extension-mobility document (size or DTD)")
    try:
        return ET.fromstring(data.decode("ascii"))
    except (UnicodeDecodeError, ET.ParseError) as exc:
        raise MobilityRequestError(f"not an extension-mobility document: {exc}") from None


def login_message(user: str, pin: str, transaction: int) -> DeviceToUserData:
    if not USER_RE.fullmatch(user):
        raise MobilityRequestError(f"user id {user!r}: 1-64 of letters, digits, '_.-'")
    if not PIN_RE.fullmatch(pin):
        raise MobilityRequestError("the PIN is 4-16 digits")
    root = ET.Element("emLogin", {"user": user, "pin": pin})
    return DeviceToUserData(EM_APPLICATION_ID, 0, 0, transaction, ET.tostring(root))


def logout_message(transaction: int) -> DeviceToUserData:
    return DeviceToUserData(EM_APPLICATION_ID, 0, 0, transaction, ET.tostring(ET.Element("emLogout")))


def parse_request(message: DeviceToUserData) -> LoginRequest | LogoutRequest:
    if message.application_id != EM_APPLICATION_ID:
        raise MobilityRequestError(f"application {message.application_id:#x} is not extension mobility")
    root = _element(message.data)
    if root.tag == "emLogout" and not root.attrib:
        return LogoutRequest()
    if root.tag == "emLogin" and set(root.attrib) == {"user", "pin"}:
        user, pin = root.attrib["user"], root.attrib["pin"]
        if not USER_RE.fullmatch(user) or not PIN_RE.fullmatch(pin):
            raise MobilityRequestError("user id or PIN malformed")
        return LoginRequest(user, pin)
    raise MobilityRequestError(f"unknown extension-mobility request <{root.tag}>")


def result_message(result: MobilityResult, transaction: int) -> UserToDeviceData:
    root = ET.Element("emResult", {"ok": "1" if result.ok else "0", "action": result.action,
                                   "user": result.user})
    root.text = result.text[:200]
    return UserToDeviceData(EM_APPLICATION_ID, 0, 0, transaction, ET.tostring(root))


def parse_result(message: UserToDeviceData) -> MobilityResult:
    if message.application_id != EM_APPLICATION_ID:
        raise MobilityRequestError(f"application {message.application_id:#x} is not extension mobility")
    root = _element(message.data)
    if root.tag != "emResult":
        raise MobilityRequestError(f"unknown extension-mobility answer <{root.tag}>")
    return MobilityResult(root.attrib.get("ok") == "1", root.attrib.get("action", ""),
                          root.attrib.get("user", ""), root.text or "")
