"""Free text is checked on the way in, at every door that writes it: a device's `description`
(POST and PATCH /api/v1/devices, and callmanager's one write path whatever the door) and a line's
`label` (POST /api/v1/lines; the gRPC AddLine door is in test_callmanager_service.py).

Ordinary text of any script is kept (Japanese, accented Latin, emoji, ideographic space); control
characters (ESC, newline, NUL, other C0/C1), bidi overrides and other format characters, and text
over the field's length are refused with a 422 whose detail names the field — and nothing is
written, audited as done, or announced. No rule ID covers this: it is input hygiene
(`ccmsec/textsafe.py` `checked_text`), the counterpart of the escaping on output."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from ccmsec.db.admin import AuditEntry
from ccmsec.db.devices import Device
from ccmsec.db.lines import Line
from ccmsec_callmanager.domain import Actor, OwnerRefused
from tests.integration.test_admin_support import assert_json_error, cheap_argon2  # noqa: F401
from tests.integration.test_admin_v2_support import add_devices, migrated_db, tracker, v2  # noqa: F401

pytestmark = pytest.mark.timeout(60)

A, B = "SEP0000000000A1", "SEP0000000000B2"

GOOD = ["", "Lobby phone", "受付の電話", "Café — 2ᵉ étage", "会議室\u3000A", "no\u00a0break", "🙂 desk"]
BAD = {
    "ESC (terminal escape)": "desk \x1b[31mred",
    "newline (a forged log line)": "desk\nadmin logged in",
    "carriage return": "desk\rX",
    "tab": "a\tb",
    "NUL": "desk\x00",
    "DEL": "desk\x7f",
    "C1 NEL": "desk\x85",
    "C1 CSI": "desk\x9b31m",
    "bidi override RLO": "desk \u202egnp.exe",
    "bidi isolate": "desk \u2066x\u2069",
    "zero-width space": "de\u200bsk",
    "BOM": "\ufeffdesk",
    "line separator": "desk\u2028x",
    "private use": "desk\ue000",
}


async def _device(v2, name: str) -> Device | None:
    async with v2.sessionmaker() as session:
        return await session.scalar(select(Device).where(Device.name == name))


async def _audit(v2) -> list[tuple[str, str, int]]:
    async with v2.sessionmaker() as session:
        return [(r.action, r.outcome, r.status) for r in
                (await session.scalars(select(AuditEntry).order_by(AuditEntry.id))).all()]


def _names_the_field(body: dict, field: str, char: str | None = None) -> None:
    detail = body["detail"]
    assert detail.startswith(f"{field}: "), detail
    if char is not None:
        assert f"U+{ord(char):04X}" in detail, detail
    assert all(c.isprintable() for c in detail), detail  # the refusal itself quotes nothing raw


async def test_a_description_in_any_script_is_stored_and_read_back_as_given(v2):
    admin = v2.admin()
    for i, text in enumerate(GOOD):
        name = f"SEP0000000001{i:02X}"
        r = await admin.post("/api/v1/devices", json={"name": name, "model": "7970", "description": text})
        assert r.status_code == 201, r.text
        assert r.json()["description"] == text
        assert (await admin.get(f"/api/v1/devices/{name}")).json()["description"] == text
    r = await admin.patch(f"/api/v1/devices/SEP000000000100", json={"description": "x" * 128})
    assert r.status_code == 200 and r.json()["description"] == "x" * 128
    r = await admin.patch(f"/api/v1/devices/SEP000000000100", json={"description": "東" * 128})
    assert r.status_code == 200 and r.json()["description"] == "東" * 128


@pytest.mark.parametrize("what", BAD)
async def test_a_control_or_format_character_in_a_new_devices_description_is_refused(v2, what):
    text = BAD[what]
    char = next(c for c in text if not (c.isprintable() or c in "\u3000\u00a0"))
    admin = v2.admin()
    before = await _audit(v2)
    body = assert_json_error(await admin.post("/api/v1/devices", json={
        "name": A, "model": "7970", "description": text}), 422)
    _names_the_field(body, "description", char)
    assert await _device(v2, A) is None, "nothing written"
    assert [a for a in await _audit(v2) if a not in before and a[1] == "ok"] == []
    assert v2.events.published == [], "nothing announced"


@pytest.mark.parametrize("what", BAD)
async def test_a_control_or_format_character_in_a_description_change_is_refused(v2, what):
    admin = v2.admin()
    assert (await admin.post("/api/v1/devices", json={"name": A, "model": "7970",
                                                      "description": "受付"})).status_code == 201
    stored = await _device(v2, A)
    published = len(v2.events.published)
    body = assert_json_error(await admin.patch(f"/api/v1/devices/{A}", json={
        "description": BAD[what], "garp": False}), 422)
    _names_the_field(body, "description")
    after = await _device(v2, A)
    assert (after.description, after.garp, after.config_version) == ("受付", True, stored.config_version)
    assert len(v2.events.published) == published, "no config.changed, no RST-2 reset"


async def test_a_description_over_128_characters_is_refused_naming_the_field(v2):
    admin = v2.admin()
    body = assert_json_error(await admin.post("/api/v1/devices", json={
        "name": A, "model": "7970", "description": "東" * 129}), 422)
    assert body["detail"].startswith("description: "), body
    assert await _device(v2, A) is None
    await add_devices(v2, (B, "7960", "non-secure"))
    body = assert_json_error(await admin.patch(f"/api/v1/devices/{B}", json={"description": "x" * 129}), 422)
    assert body["detail"].startswith("description: "), body
    assert (await _device(v2, B)).description == ""


async def test_the_one_write_path_refuses_it_whatever_the_door(v2):
    """callmanager's domain (which every door calls to change a device) checks too, before it
    reads or writes anything — not only the API's body model."""
    await add_devices(v2, (A, "7960", "non-secure"))
    domain = v2.app.state.domain
    for text in BAD.values():
        with pytest.raises(OwnerRefused) as info:
            await domain.update_device(Actor("cli/cli", "grpc"), A, {"description": text})
        assert info.value.kind == "invalid" and info.value.message.startswith("description: ")
    assert (await _device(v2, A)).description == ""
    assert v2.events.published == []
    changed = await domain.update_device(Actor("cli/cli", "grpc"), A, {"description": "受付の電話"})
    assert changed["description"] == "受付の電話"


async def test_the_database_model_refuses_it_from_any_other_writer(v2):
    """The last guard: a writer that skips both (a script, a migration) still cannot store it."""
    with pytest.raises(ValueError, match="^description: control character"):
        Device(name=A, model="7970", description="a\x1bb")
    with pytest.raises(ValueError, match="^label: "):
        Line(dn="1000", device=A, line_index=1, label="a\nb")


async def test_a_line_label_with_a_control_character_or_outside_ascii_is_refused(v2):
    """A line's label goes to the phone in a Skinny LineStat, whose text fields are ASCII: printable
    ASCII only (before, a non-ASCII label was stored and the phone's LineStatReq then failed)."""
    await add_devices(v2, (A, "7960", "non-secure"))
    admin = v2.admin()
    for label in ("main\x1b[2J", "a\nb", "\u202eniam", "本線", "l\x00"):
        body = assert_json_error(await admin.post("/api/v1/lines", json={
            "dn": "1000", "device": A, "label": label}), 422)
        _names_the_field(body, "label")
    async with v2.sessionmaker() as session:
        assert (await session.scalars(select(Line))).all() == []
    assert v2.events.published == []
    r = await admin.post("/api/v1/lines", json={"dn": "1000", "device": A, "label": "Main line #1"})
    assert r.status_code == 201 and r.json()["label"] == "Main line #1"
