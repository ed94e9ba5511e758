"""The call agent and simulated phone displays wired together in memory (no sockets): what each
phone sends reaches the agent, what the agent sends reaches the phone, channels are "opened" on
made-up addresses. The same two state machines run over real TCP/TLS in callmanager and
phone-sim; this harness exercises their logic fast and deterministically."""

from __future__ import annotations

import itertools

from ccmsec.calls.agent import CallAgent
from ccmsec.calls.config import AgentSettings, DeviceProfile, LineConfig, SpeedDial
from ccmsec.calls.media import AddressPool
from ccmsec.policy.calls import EndpointKind
from ccmsec.policy.devices import SecurityMode
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp_phone import OpenChannel, SccpPhone

NS, AUTH, ENC = SecurityMode.NON_SECURE, SecurityMode.AUTHENTICATED, SecurityMode.ENCRYPTED


class Harness:
    def __init__(self, settings: AgentSettings | None = None, **agent_kw):
        self.resources = AddressPool("127.0.0.250", 30000)
        self.agent = CallAgent(settings or AgentSettings(inter_digit_timeout=2.0,
                                                         no_answer_timeout=10.0),
                               resources=self.resources, **agent_kw)
        self.phones: dict[str, SccpPhone] = {}
        self.addresses: dict[str, str] = {}
        self.now = 100.0
        self._ports = itertools.count(20000, 2)
        self.log: list[tuple[str, str, s.Message]] = []   # (direction, device, message)
        self.auto_open = True

    def add(self, name: str, *dns: str, mode: SecurityMode = NS, model: str = "7960",
            codecs: tuple[int, ...] | None = (4, 2), kind: EndpointKind = EndpointKind.PHONE,
            speed_dials: tuple[SpeedDial, ...] = (), wideband: bool = False,
            forward_busy: str = "", forward_no_answer: str = "", **profile_kw) -> SccpPhone:
        lines = tuple(LineConfig(dn, forward_busy=forward_busy,
                                 forward_no_answer=forward_no_answer) for dn in (dns or ("1000",)))
        profile = DeviceProfile(name, model=model, kind=kind, security_mode=mode, lines=lines,
                                speed_dials=speed_dials, wideband_region=wideband, **profile_kw)
        self.agent.register(profile, self.now)
        if codecs is not None:   # None: its CapabilitiesRes has not arrived (yet)
            self.agent.capabilities(name, s.CapabilitiesRes(
                tuple(s.MediaCapability(cd) for cd in codecs), encryption_capable=mode is ENC))
        phone = SccpPhone(name)
        self.phones[name] = phone
        self.addresses[name] = f"10.0.{len(self.phones)}.1"
        phone.start_setup()
        self.pump()
        assert phone.ready, f"{name} did not finish its set-up"
        return phone

    def pump(self) -> None:
        for _ in range(1000):
            moved = False
            for name, phone in self.phones.items():
                for message in phone.messages_to_send():
                    moved = True
                    self.log.append(("up", name, message))
                    self.agent.receive(name, message, self.now)
            for device, message in self.agent.messages_to_send():
                moved = True
                self.log.append(("down", device, message))
                phone = self.phones.get(device)
                if phone is None:
                    continue
                for event in phone.handle(message):
                    if isinstance(event, OpenChannel) and self.auto_open:
                        phone.channel_opened(event.channel.party_id, self.addresses[device],
                                             next(self._ports))
            if not moved:
                return
        raise AssertionError("messages keep flowing: a loop between agent and phones")

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.agent.tick(self.now)
        self.pump()

    def gone(self, name: str) -> None:
        self.phones.pop(name)
        self.agent.unregister(name, self.now)
        self.pump()

    def sent_to(self, device: str, kind: type) -> list[s.Message]:
        return [m for d, dev, m in self.log if d == "down" and dev == device and isinstance(m, kind)]

    def call(self, caller: str, number: str) -> None:
        self.phones[caller].dial(number)
        self.pump()

    def events(self) -> list:
        out = []
        while (event := self.agent.next_event()) is not None:
            out.append(event)
        return out

    def only_call(self):
        calls = self.agent.views()
        assert len(calls) == 1, calls
        return calls[0]


def consult(h: Harness, pb: SccpPhone, pc: SccpPhone, number: str = "1003", *,
            conference: bool = False) -> None:
    """`pb` presses Transfer (or Confrn) on its connected call, dials `number`, `pc` answers:
    the first call is held, the consultation talks."""
    (pb.conference if conference else pb.transfer)()
    h.pump()
    pb.keypad(number)
    h.pump()
    pc.answer()
    h.pump()


def complete(h: Harness, pb: SccpPhone, *, conference: bool = False, on_hook: bool = False) -> None:
    """`pb` completes its consultation: presses Transfer (or Confrn) again, or hangs up."""
    if on_hook:   # hanging up during the consultation completes a transfer
        pb.on_hook()
    else:
        (pb.conference if conference else pb.transfer)(pb.active_call().reference)
    h.pump()


def conference_in(h: Harness, pb: SccpPhone, pc: SccpPhone, number: str = "1003") -> None:
    """`pb` conferences `pc` (reached at `number`) into its connected call."""
    consult(h, pb, pc, number, conference=True)
    complete(h, pb, conference=True)
