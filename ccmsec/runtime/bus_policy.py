"""Who may publish which event on the bus (issue 9 §3, rules BUS-1…BUS-4 in docs/rules.md).

One declared table, used twice:

* by the NATS server: `user_permissions(role, node, key)` becomes each user's publish allow-list in the
  server configuration the runner (and `ccmsec pki nats-config` for compose) renders, so a user may
  publish only under its own role's prefix and only the kinds the table gives its role (BUS-2);
* by every consumer: `check_event(subject, event)` drops an event whose subject names a publisher
  the table does not allow for its kind, or whose envelope disagrees with its subject (BUS-3).

Subjects carry the publisher's role: `ccmsec.<role>.<kind>[.<target>]`, e.g.
`ccmsec.callmanager.device.reset` or `ccmsec.cli.service.restart.capf`. Since the server lets a
user publish only under its own role, the subject itself proves who published (BUS-1: every
connection authenticates with its own nkey; there is no anonymous user).

No service may delete, reconfigure or purge the stream, or delete a consumer (BUS-4): the
JetStream API a service may use is listed in `_JS_API_ALLOWED`; everything else is denied.

Each user reaches only its own consumers and its own replies (BUS-6): it may create, bind, read
and ack only the durable consumers `CONSUMERS` declares for its role, named `<node>-<name>`
(NATS subject wildcards match whole tokens, and a consumer name is one token, so the allow-list
names each consumer rather than a prefix); and it receives replies and pushed events only on its
own inbox prefix `_INBOX.<its nkey public key>` — so one service can neither bind another's durable
consumer (and take its events) nor read another's JetStream API replies or deliveries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

from ccmsec.runtime.settings import ROLES as SERVICE_ROLES

SUBJECT_PREFIX = "ccmsec"
STREAM = "CCMSEC"

# `service.restart.<target>`: the roles each publisher may restart. The CLI any (CHK-14, `ccmsec
# restart`); an owner only what its changes require (`ccmsec/policy/resets.py`): the CTL Provider
# callmanager and tftp-signer (RST-3/4), itself (RST-7), callmanager and CAPF (LATER-8); CAPF
# itself (RST-8). Call control's changes restart no service, so it may restart none.
RESTART_TARGETS: dict[str, frozenset[str]] = {
    "cli": frozenset(SERVICE_ROLES),
    "ctl-provider": frozenset({"callmanager", "tftp-signer", "ctl-provider", "capf"}),
    "capf": frozenset({"capf"}),
}

# Event kind -> the roles that may publish it. A kind missing here is published by nobody.
PUBLISHERS: dict[str, frozenset[str]] = {
    # RST-* resets: call control (device changes, the administration API inside it), the CTL
    # Provider (cluster mode, CTL), CAPF (its enterprise parameters), the administrator's CLI.
    "device.reset": frozenset({"callmanager", "ctl-provider", "capf", "cli"}),
    # RST-3/4/7/8, LATER-8 and CHK-14 (`ccmsec restart`), each only of its RESTART_TARGETS.
    "service.restart": frozenset(RESTART_TARGETS),
    "ctl.updated": frozenset({"ctl-provider"}),
    # The cluster mode's owner, the CTL Provider, alone changes and announces it (issue 9 §5).
    "mode.changed": frozenset({"ctl-provider"}),
    "config.changed": frozenset({"callmanager", "capf"}),
    # Any service may report a gRPC call its policy refused (issue 9 §2 audit).
    "access.denied": frozenset(SERVICE_ROLES),
    # The owners whose writes callmanager (the audit log's writer) records (issue 9 §5 audit):
    # every service, since each owns an outbox the operator may resend (`outbox.resend`); the
    # record names its true publisher (BUS-2 subject), and each publisher may record only its own
    # kind of write (OWNER_CHANGE_ACTIONS, checked by every consumer: BUS-3).
    "owner.change": frozenset(SERVICE_ROLES),
    # CAPF, the owner of the offline issuer's CA, says it changed; call control then asks it
    # (`Capf/GetThirdPartyCa`): the event carries no trust, only "ask again".
    "lsc-ca.changed": frozenset({"capf"}),
}
KINDS = tuple(PUBLISHERS)

# `owner.change`: the audit actions each owner records (an action equal to an entry, or starting
# with one ending in "."). Any service may record its own outbox's resend — `outbox.resend`, whose
# target must be the publisher itself (`<its role>/<its node>`) — and nothing else, so no service
# can write an audit record about another service or another kind of write.
OWNER_CHANGE_ACTIONS: dict[str, tuple[str, ...]] = {
    "ctl-provider": ("ctl_provider.", "cluster.legacy_tls", "tftp_cluster."),
    "capf": ("capf.",),
    "tftp-signer": ("tftp.resign",),
}
OUTBOX_RESEND = "outbox.resend"


def owner_change_refusal(publisher: str, event) -> str:
    """Why `publisher` may not record this `owner.change` ("" when it may)."""
    o, origin = event.owner_change, event.origin
    if o.action == OUTBOX_RESEND:
        if o.target != f"{publisher}/{origin}" or not origin:
            return f"{publisher} may record only its own outbox's resend, not {o.target[:64]!r}"
        return ""
    if any(o.action.startswith(a) and len(o.action) > len(a) if a.endswith(".") else o.action == a
           for a in OWNER_CHANGE_ACTIONS.get(publisher, ())):
        return ""
    return f"{publisher} may not record owner.change {o.action[:64]!r}"
# Kinds addressed in the subject: `service.restart.<role>`; the others name devices in the body.
TARGETED_KINDS = ("service.restart",)
# Identities that connect to NATS: every service role and the command line.
BUS_ROLES = (*SERVICE_ROLES, "cli")

# The durable consumers each role binds, by name (`Service.subscribe(subject, name, ...)`); a node
# binds `<node>-<name>` (`durable_name`). The server allows a user only its own node's names of its
# role (BUS-6), so a new subscription needs its name here first. The command line binds none.
_EVERY_SERVICE = ("restart", "device-reset")
CONSUMERS: dict[str, tuple[str, ...]] = {
    **{role: _EVERY_SERVICE for role in SERVICE_ROLES},
    # + targeted resets and routing changes (SCCP), every service's refused calls and the owners'
    # changes (audit).
    "callmanager": (*_EVERY_SERVICE, "device-reset-targeted", "config-changed-calls", "access-denied",
                    "mode-audit", "ctl-audit", "owner-audit",
                    # every call-control node follows ctl-provider's mode and CTL (issue 9 §5)
                    "cluster-mode", "cluster-ctl",
                    # and CAPF's third-party CA, the LSCs it trusts on 2443
                    "lsc-ca"),
    "srtp-gateway": (*_EVERY_SERVICE, "mode"),
    "tftp-signer": (*_EVERY_SERVICE, "config-changed", "mode-changed", "ctl-updated"),
    "capf": (*_EVERY_SERVICE, "ctl-updated"),
    "srst": (*_EVERY_SERVICE, "srst-config"),
    "cli": (),
}
# A durable left over for other subjects is never bound: `EventBus` moves to `<durable>-2` (see
# `EventBus._durable_for`), so that spare name is allowed too.
SPARE_SUFFIXES = ("", "-2")

# The JetStream API a service or the CLI may use: stream info/creation of CCMSEC only (creating is
# harmless: it fails when the stream exists with another configuration, and lets any service heal
# a lost stream), its own consumers (create/info), acks and flow control. Never delete, update,
# purge, snapshot or restore, and never another stream.
_JS_API_ALLOWED = (
    "$JS.API.INFO",
    f"$JS.API.STREAM.INFO.{STREAM}",
    f"$JS.API.STREAM.CREATE.{STREAM}",
    "$JS.API.STREAM.NAMES",
    f"$JS.API.CONSUMER.NAMES.{STREAM}",
    "$JS.FC.>",
)


def _consumer_api(durable: str) -> list[str]:
    """The JetStream API of one durable consumer of ours: create (both forms nats-py may use),
    info (binding reads it first), next message, acks."""
    return [
        f"$JS.API.CONSUMER.CREATE.{STREAM}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{STREAM}.{durable}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.{durable}",
        f"$JS.API.CONSUMER.INFO.{STREAM}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{durable}",
        f"$JS.ACK.{STREAM}.{durable}.>",
    ]
# Said explicitly too (an allow-list already refuses them): what issue 9 saw an attacker do.
_JS_API_DENIED = (
    "$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.UPDATE.>", "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>", "$JS.API.STREAM.SNAPSHOT.>", "$JS.API.STREAM.RESTORE.>",
    "$JS.API.CONSUMER.DELETE.>", "$JS.API.ACCOUNT.>", "$JS.API.META.>", "$JS.API.SERVER.>",
)


class SubjectError(ValueError):
    """A subject that is not `ccmsec.<role>.<kind>[.<target>]` with a known kind."""


@dataclass(frozen=True)
class Subject:
    publisher: str
    kind: str
    target: str | None = None


def may_publish(role: str, kind: str) -> bool:
    return role in PUBLISHERS.get(kind, ())


def may_restart(role: str, target: str) -> bool:
    return target in RESTART_TARGETS.get(role, ())


def subject_for(kind: str, target: str | None = None, publisher: str = "*") -> str:
    """The subject of `kind` published by `publisher`; publisher `*` (the default) is the pattern a
    consumer subscribes to (every publisher; the consumer checks each one against the table)."""
    if kind not in PUBLISHERS:
        raise SubjectError(f"unknown event kind {kind!r}")
    subject = f"{SUBJECT_PREFIX}.{publisher}.{kind}"
    if kind in TARGETED_KINDS:
        if not target and publisher != "*":
            raise SubjectError(f"{kind} is addressed: it needs a target")
        subject += f".{target or '*'}"
    return subject


def parse_subject(subject: str) -> Subject:
    parts = subject.split(".")
    if len(subject) > 256 or len(parts) < 3 or parts[0] != SUBJECT_PREFIX:
        raise SubjectError(f"not an event subject: {subject[:80]!r}")
    publisher, rest = parts[1], ".".join(parts[2:])
    if rest in PUBLISHERS and rest not in TARGETED_KINDS:
        return Subject(publisher, rest)
    for kind in TARGETED_KINDS:
        if rest.startswith(kind + ".") and len(parts) == len(kind.split(".")) + 3:
            return Subject(publisher, kind, parts[-1])
    raise SubjectError(f"no known event kind in subject {subject[:80]!r}")


def check_event(subject: str, event) -> tuple[Subject | None, str]:
    """(parsed subject, "") when the event may be handled, or (parsed or None, why it is dropped)."""
    try:
        parsed = parse_subject(subject)
    except SubjectError as exc:
        return None, str(exc)
    if not may_publish(parsed.publisher, parsed.kind):
        return parsed, f"{parsed.publisher} may not publish {parsed.kind}"
    if parsed.kind == "service.restart" and not may_restart(parsed.publisher, parsed.target):
        return parsed, f"{parsed.publisher} may not restart {parsed.target[:40]!r}"
    if event.kind != parsed.kind:
        return parsed, f"envelope kind {event.kind[:40]!r} differs from its subject's {parsed.kind!r}"
    if parsed.kind == "service.restart" and event.service_restart.role != parsed.target:
        return parsed, (f"restart of {event.service_restart.role[:40]!r} sent on the subject of "
                        f"{parsed.target!r}")
    if parsed.kind == "owner.change":
        return parsed, owner_change_refusal(parsed.publisher, event)
    if event.WhichOneof("body") == "owner_change":  # callmanager records this body from any kind
        return parsed, f"an owner.change record sent as {parsed.kind!r}"
    return parsed, ""


def describe() -> str:
    """The table as Markdown (docs/architecture.md embeds it; a test keeps the two equal)."""
    lines = ["| event kind | subject | roles that may publish it |", "|---|---|---|"]
    for kind, roles in PUBLISHERS.items():
        shown = "every service role" if roles == frozenset(SERVICE_ROLES) else ", ".join(sorted(roles))
        if kind == "service.restart":
            shown = ", ".join(f"{r} ({_targets(r)})" for r in sorted(roles))
        lines.append(f"| `{kind}` | `{subject_for(kind, '<target>' if kind in TARGETED_KINDS else None, '<role>')}` "
                     f"| {shown} |")
    return "\n".join(lines)


def _targets(role: str) -> str:
    """The roles `role` may restart, for the docs' tables."""
    targets = RESTART_TARGETS.get(role, frozenset())
    return "any role" if targets == frozenset(SERVICE_ROLES) else "of " + ", ".join(sorted(targets))


def durable_name(node: str, name: str) -> str:
    """The durable consumer `name` of `node` (one NATS token: no dots, wildcards or spaces)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{node}-{name}")


def may_consume(role: str, name: str) -> bool:
    return name in CONSUMERS.get(role, ())


def inbox_prefix(public_key: str) -> str:
    """The only inbox a user may receive on: JetStream API replies and push deliveries (BUS-6)."""
    if not public_key or not public_key.isalnum():
        raise SubjectError(f"not an nkey public key: {public_key[:60]!r}")
    return f"_INBOX.{public_key}"


def describe_permissions() -> str:
    """The NATS permissions by role as Markdown (docs/architecture.md embeds it; a test keeps the
    two equal). `<node>` is the user's node, `<key>` its nkey public key."""
    lines = ["| user | may publish | durable consumers it may create, bind, read and ack | receives on |",
             "|---|---|---|---|"]
    for role in BUS_ROLES:
        kinds = [f"`{k}` ({_targets(role)})" if k == "service.restart" else f"`{k}`"
                 for k in KINDS if may_publish(role, k)]
        consumers = ", ".join(f"`<node>-{n}`" for n in CONSUMERS[role])
        consumers = f"{consumers} (and each one's spare `-2`)" if consumers else "none"
        lines.append(f"| {role} | {', '.join(kinds) or 'nothing'} under `ccmsec.{role}.` | {consumers} "
                     f"| `ccmsec.>`, `_INBOX.<key>.>` |")
    lines.append("| bus operator (`DATA/pki/nats-admin.nk`) | everything | every consumer | everything |")
    denied = ", ".join(f"`{s.removesuffix('.>')}`" for s in _JS_API_DENIED)
    lines += ["", "Every service user and the CLI may also use, of the JetStream API: "
              + ", ".join(f"`{s}`" for s in _JS_API_ALLOWED)
              + f". Denied to all of them: {denied} (and everything not listed)."]
    return "\n".join(lines)


# --- the server's side ------------------------------------------------------------------------

def user_permissions(role: str, node: str, public_key: str) -> dict:
    """The NATS permissions of the user of `role` on `node` with nkey `public_key`: publish only
    under its own prefix, only its kinds (BUS-2); only its own consumers and inbox (BUS-6)."""
    if role not in BUS_ROLES:
        raise SubjectError(f"role {role!r} does not connect to the bus")
    own = []
    for kind in KINDS:
        if may_publish(role, kind):
            if kind == "service.restart":  # one subject per role it may restart
                own += [subject_for(kind, t, publisher=role) for t in sorted(RESTART_TARGETS[role])]
            else:
                own.append(subject_for(kind, None, publisher=role))
    consumers = []
    for name in CONSUMERS[role]:
        for suffix in SPARE_SUFFIXES:
            consumers += _consumer_api(durable_name(node, name) + suffix)
    return {
        "publish": {"allow": [*own, *_JS_API_ALLOWED, *consumers], "deny": list(_JS_API_DENIED)},
        "subscribe": {"allow": [f"{SUBJECT_PREFIX}.>", inbox_prefix(public_key) + ".>"]},
    }


@dataclass(frozen=True)
class BusUser:
    role: str          # a BUS_ROLES role, or "admin" (the operator's user: every permission)
    node: str
    public_key: str    # the nkey user's public key (U...)


def server_config(users: Iterable[BusUser], *, listen: str, store_dir: str, server_name: str) -> str:
    """A nats-server configuration: JetStream, and only these users (no anonymous access)."""
    entries = []
    for user in users:
        entry = {"nkey": user.public_key}
        if user.role != "admin":
            entry["permissions"] = user_permissions(user.role, user.node, user.public_key)
        entries.append(entry)
    if not entries:
        raise SubjectError("a bus with no users")
    config = {
        "server_name": server_name,
        "listen": listen,
        "jetstream": {"store_dir": store_dir},
        "authorization": {"users": entries},
    }
    # JSON is valid nats-server configuration; the comment names the users (public keys only).
    names = ", ".join(f"{u.role}/{u.node}" for u in users)
    return f"# ccmsec event bus (rendered by ccmsec; users: {names})\n" + json.dumps(config, indent=2) + "\n"
