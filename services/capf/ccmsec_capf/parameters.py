"""CAPF parameters: what an administrator may change, their checks, and where they are kept.

Two scopes, as on the real system: *service* parameters are read when the CAPF service starts,
so changing one needs a CAPF restart (RST-8); *enterprise* parameters shape what the phones are
given, so changing one needs the devices reset (RST-6). Values live in the publisher database
(`capf_settings`, CAPF's own table, keys `capf.service.<name>` / `capf.enterprise.<name>`), never in a file
(CHK-7). Which events a change needs is decided by `ccmsec.policy.resets`, not here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ccmsec.db.capf import AUTH_MODES, MAX_AUTH_FAILURES, CapfSetting, set_capf_setting
from ccmsec.pki.lsc import LSC_DAYS
from ccmsec.policy.resets import CapfEnterpriseParamsChanged, CapfServiceParamsChanged, Change
from ccmsec.textsafe import shown

Scope = Literal["service", "enterprise"]
KEY_TYPES = ("rsa1024", "rsa2048", "rsa4096", "ec256")  # what the CLI and the schedule accept
MAX_VALUES_PER_CHANGE = 16
ISSUERS = ("capf", "offline")
# One acceptor per core (a handshake and an LSC are two RSA signatures each install); a
# single-core machine gains nothing from them.
DEFAULT_ACCEPTORS = min(os.cpu_count() or 1, 4) if (os.cpu_count() or 1) > 1 else 0


class ParameterError(ValueError):
    """An unknown parameter name or a value outside its allowed set; the message says which."""


def _int_in(low: int, high: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        try:
            number = int(value.strip())
        except ValueError:
            raise ParameterError(f"'{shown(value)}' is not a whole number") from None
        if not low <= number <= high:
            raise ParameterError(f"{number} is outside {low}..{high}")
        return str(number)
    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise ParameterError(f"'{shown(value)}' is not one of {', '.join(choices)}")
        return value
    return check


@dataclass(frozen=True)
class Parameter:
    name: str
    scope: Scope
    default: str
    check: Callable[[str], str]
    help: str


PARAMETERS: dict[str, Parameter] = {p.name: p for p in (
    # Service parameters (RST-8: restart CAPF).
    Parameter("max_auth_failures", "service", str(MAX_AUTH_FAILURES), _int_in(1, 20),
              "wrong credentials before an operation is locked"),
    Parameter("session_timeout", "service", "120", _int_in(10, 600),
              "seconds one phone session may last"),
    Parameter("max_connections", "service", "512", _int_in(1, 4096),
              "concurrent phone sessions on the CAPF port"),
    Parameter("max_connections_per_source", "service", "64", _int_in(1, 4096),
              "concurrent phone sessions from one address (so one source cannot starve the others)"),
    Parameter("acceptor_processes", "service", str(DEFAULT_ACCEPTORS), _int_in(0, 16),
              "processes serving the CAPF port (TLS, sessions, LSC signing) on the cores; the service "
              "process keeps the database (0: the service process serves the port itself)"),
    Parameter("retry_delay", "service", "600", _int_in(5, 86400),
              "seconds a phone waits before coming back for an offline-CA certificate"),
    # Enterprise parameters (RST-6: reset the devices).
    Parameter("certificate_validity_days", "enterprise", str(LSC_DAYS), _int_in(1, 3650),
              "validity of the LSCs CAPF issues"),
    Parameter("default_auth_mode", "enterprise", "null", _one_of(AUTH_MODES),
              "authentication mode used when a schedule names none"),
    Parameter("default_key_type", "enterprise", "rsa2048", _one_of(KEY_TYPES),
              "key type used when a schedule names none"),
    Parameter("operation_days", "enterprise", "0", _int_in(0, 365),
              "days an operation stays valid when a schedule gives no deadline (0: no deadline)"),
    Parameter("issuer", "enterprise", "capf", _one_of(ISSUERS),
              "who signs LSCs: capf (CAPF itself) or offline (a third-party CA, via CSR export/import)"),
)}


def setting_key(p: Parameter) -> str:
    return f"capf.{p.scope}.{p.name}"


def validate(scope: Scope, values: dict[str, str]) -> dict[str, str]:
    """The normalised values, or ParameterError naming the first bad name or value."""
    if not values:
        raise ParameterError("no parameter given")
    if len(values) > MAX_VALUES_PER_CHANGE:
        raise ParameterError(f"at most {MAX_VALUES_PER_CHANGE} parameters per change")
    out = {}
    for name, value in values.items():
        p = PARAMETERS.get(name)
        if p is None:
            raise ParameterError(f"unknown CAPF parameter '{shown(name)}'; known: {', '.join(sorted(PARAMETERS))}")
        if p.scope != scope:
            flag = " --enterprise" if p.scope == "enterprise" else " (without --enterprise)"
            raise ParameterError(f"{name} is a CAPF {p.scope} parameter; set it as one{flag}")
        try:
            out[name] = p.check(value)
        except ParameterError as exc:
            raise ParameterError(f"{name}: {exc}") from None
    return out


def change_of(scope: Scope) -> Change:
    """The configuration change a parameter scope stands for (input of required_actions)."""
    return CapfServiceParamsChanged() if scope == "service" else CapfEnterpriseParamsChanged()


@dataclass(frozen=True)
class CapfParameters:
    """Every parameter's current value (stored value, else the default)."""

    values: dict[str, str]

    def get(self, name: str) -> str:
        return self.values[name]

    def int(self, name: str) -> int:
        return int(self.values[name])

    def scope(self, scope: Scope) -> dict[str, str]:
        return {n: v for n, v in self.values.items() if PARAMETERS[n].scope == scope}


async def load_parameters(factory: async_sessionmaker[AsyncSession]) -> CapfParameters:
    keys = {setting_key(p): p.name for p in PARAMETERS.values()}
    values = {p.name: p.default for p in PARAMETERS.values()}
    async with factory() as s:
        rows = (await s.execute(select(CapfSetting.key, CapfSetting.value)
                                .where(CapfSetting.key.in_(keys)))).all()
    for key, value in rows:
        try:
            values[keys[key]] = PARAMETERS[keys[key]].check(value)
        except ParameterError:
            pass  # a value corrupted outside the API falls back to the default
    return CapfParameters(values)


async def store_parameters(factory: async_sessionmaker[AsyncSession], scope: Scope,
                           values: dict[str, str]) -> dict[str, str]:
    """Validate and store in one transaction; returns what was stored."""
    checked = validate(scope, values)
    async with factory() as s, s.begin():
        for name, value in checked.items():
            await set_capf_setting(s, setting_key(PARAMETERS[name]), value)
    return checked
