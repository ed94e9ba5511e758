"""DriveCtiPort's answers to bad input: a wrong request is INVALID_ARGUMENT with a clear message,
never FAILED_PRECONDITION (that means the port cannot do it *now*), and nothing reaches the port."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest

from ccmsec_callmanager.calls_api import MAX_CTI_NUMBER, CallsServicerMixin
from ccmsec_proto import callmanager_pb2 as pb


class Aborted(Exception):
    pass


class Context:
    async def abort(self, code, details):
        self.code, self.details = code, details
        raise Aborted


class Calls:
    def __init__(self):
        self.driven = []

    def cti(self, port, action, number=""):
        self.driven.append((port, action, number))
        phone = SimpleNamespace(calls={})
        return SimpleNamespace(profile=SimpleNamespace(name=port), phone=phone)


def _servicer(calls):
    servicer = CallsServicerMixin()
    servicer.service = SimpleNamespace(callcontrol=SimpleNamespace(calls=calls))
    return servicer


@pytest.mark.parametrize("number", ["12a4", "7000; drop", "12 34", "", "1" * (MAX_CTI_NUMBER + 1),
                                    "1" * (MAX_CTI_NUMBER + 1) + "#", "٣٤"])
async def test_dial_with_a_number_that_is_not_digits_is_invalid_argument(number):
    calls, context = Calls(), Context()
    with pytest.raises(Aborted):
        await _servicer(calls).DriveCtiPort(pb.CtiRequest(port="CTI7000", action="dial", number=number), context)
    assert context.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "dial needs a number of 1 to 24 characters 0-9 * # +" in context.details
    assert calls.driven == []


async def test_dial_with_keypad_characters_reaches_the_port():
    calls = Calls()
    reply = await _servicer(calls).DriveCtiPort(pb.CtiRequest(port="CTI7000", action="dial", number="+1*2#3"),
                                                Context())
    assert reply.port == "CTI7000" and calls.driven == [("CTI7000", "dial", "+1*2#3")]


async def test_dial_with_24_digits_and_the_hash_ending_them_reaches_the_port():
    # the '#' only ends dialling: it does not count against the 24 characters of a number
    calls = Calls()
    number = "1" * MAX_CTI_NUMBER + "#"
    reply = await _servicer(calls).DriveCtiPort(pb.CtiRequest(port="CTI7000", action="dial", number=number),
                                                Context())
    assert reply.port == "CTI7000" and calls.driven == [("CTI7000", "dial", number)]
