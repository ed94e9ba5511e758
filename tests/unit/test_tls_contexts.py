"""TLS context factories: cipher sets per SCCP mode, certificate choice, transport checks."""

from __future__ import annotations

import pytest

from ccmsec.pki import ca, tls


@pytest.fixture(scope="module")
def pki():
    capf = ca.create_ca(ca.name("CAPF"))
    mfr = ca.create_ca(ca.name("Manufacturer"))
    key = ca.new_key()
    ccm = ca.Issued(ca.self_signed(ca.name("ccm1"), key), key)
    lsc = ca.issue_with_new_key(capf, ca.name("SEP001122334455"), server=False)
    mic = ca.issue_with_new_key(mfr, ca.name("SEP001122334455"), server=False)
    return capf, mfr, ccm, lsc, mic


def _names(ctx):
    return {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}


def test_auth7_authenticated_phone_offers_only_null_ciphers(pki):
    _, _, ccm, lsc, _ = pki
    names = _names(tls.sccp_phone_context("authenticated", [ccm.cert], lsc=lsc))
    assert names and all("NULL" in n for n in names)


def test_enc1_encrypted_phone_offers_only_aes_ciphers(pki):
    _, _, ccm, lsc, _ = pki
    names = _names(tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc))
    assert names and all("AES" in n and "NULL" not in n for n in names)


def test_server_offers_both_modes(pki):
    capf, mfr, ccm, _, _ = pki
    names = _names(tls.sccp_server_context(ccm, [capf.cert, mfr.cert]))
    assert any("NULL" in n for n in names) and any("AES" in n for n in names)


def test_cert2_lsc_takes_precedence_over_mic(pki):
    _, _, _, lsc, mic = pki
    assert tls.choose_phone_certificate(lsc, mic) is lsc
    assert tls.choose_phone_certificate(None, mic) is mic


def test_auth6_no_certificate_or_no_ctl_means_no_tls(pki):
    _, _, ccm, lsc, _ = pki
    with pytest.raises(ValueError, match="AUTH-6: the phone holds neither"):
        tls.sccp_phone_context("encrypted", [ccm.cert])
    with pytest.raises(ValueError, match="AUTH-6: no CallManager certificate"):
        tls.sccp_phone_context("encrypted", [], lsc=lsc)
    with pytest.raises(ValueError, match="non-secure device"):
        tls.sccp_phone_context("non-secure", [ccm.cert], lsc=lsc)


def test_auth2_server_requires_client_ca(pki):
    _, _, ccm, _, _ = pki
    with pytest.raises(ValueError):
        tls.sccp_server_context(ccm, [])


def test_transport_mode_of_cipher():
    assert tls.transport_mode_of_cipher("NULL-SHA256") is tls.SccpTransportMode.AUTHENTICATED
    assert tls.transport_mode_of_cipher("ECDHE-RSA-NULL-SHA") is tls.SccpTransportMode.AUTHENTICATED
    assert tls.transport_mode_of_cipher("AES128-SHA256") is tls.SccpTransportMode.ENCRYPTED
    assert tls.transport_mode_of_cipher("TLS_AES_256_GCM_SHA384") is tls.SccpTransportMode.ENCRYPTED
    for name in tls.AES_CIPHERS:
        assert tls.transport_mode_of_cipher(name) is tls.SccpTransportMode.ENCRYPTED, name
    for name in tls.NULL_CIPHERS:
        assert tls.transport_mode_of_cipher(name) is tls.SccpTransportMode.AUTHENTICATED, name
    # DEV-1: encrypted = TLS with AES; anything else is neither mode, never encrypted by default
    for name, words in [("ECDHE-RSA-CHACHA20-POLY1305", "neither AES"), ("DES-CBC3-SHA", "neither AES"),
                        ("CAMELLIA128-SHA", "neither AES"), ("TLS_CHACHA20_POLY1305_SHA256", "neither AES"),
                        ("", "(none) is neither"), ("ADH-AES128-SHA", "anonymous"), ("AECDH-NULL-SHA", "anonymous")]:
        with pytest.raises(tls.TransportModeMismatch, match=words.replace("(", r"\(").replace(")", r"\)")):
            tls.transport_mode_of_cipher(name)
    assert tls.transport_mode_of(None) is tls.SccpTransportMode.NON_SECURE


@pytest.mark.parametrize("mode,transport,ok", [
    ("encrypted", "encrypted", True), ("authenticated", "authenticated", True),
    ("non-secure", "non-secure", True), ("encrypted", "authenticated", False),
    ("encrypted", "non-secure", False), ("authenticated", "encrypted", False),
    ("authenticated", "non-secure", False),
])
def test_enc1_auth7_transport_must_match_device_mode(mode, transport, ok):
    if ok:
        tls.check_transport_for_mode(mode, transport)
    else:
        with pytest.raises(tls.TransportModeMismatch, match=f"configured {mode}"):
            tls.check_transport_for_mode(mode, transport)


def test_keylog_helper_sets_filename(pki, tmp_path):
    _, _, ccm, lsc, _ = pki
    ctx = tls.enable_keylog(tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc),
                            tmp_path / "keys.log")
    assert ctx.keylog_filename == str(tmp_path / "keys.log")


def _handshake(server_ctx, client_ctx):
    """One in-memory TLS handshake between two contexts (no sockets)."""
    import ssl

    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert client.cipher() is not None and server.cipher() is not None
    return client.cipher()[0]


def test_sslkeylogfile_is_honoured_by_phone_and_server_contexts(pki, tmp_path, monkeypatch):
    """Every TLS context of the project logs session secrets to $SSLKEYLOGFILE (for Wireshark),
    in a file only its owner can read; without the variable nothing is written."""
    import os
    import stat

    capf, _, ccm, lsc, _ = pki
    keylog = tmp_path / "keys.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(keylog))
    _handshake(tls.sccp_server_context(ccm, [capf.cert]),
               tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc))
    lines = keylog.read_text().splitlines()
    assert any(line.startswith("CLIENT_RANDOM ") for line in lines), lines
    assert stat.S_IMODE(os.stat(keylog).st_mode) == 0o600
    monkeypatch.delenv("SSLKEYLOGFILE")
    before = keylog.read_text()
    _handshake(tls.sccp_server_context(ccm, [capf.cert]),
               tls.sccp_phone_context("authenticated", [ccm.cert], lsc=lsc))
    assert keylog.read_text() == before


def test_enable_keylog_file_is_owner_only(pki, tmp_path, monkeypatch):
    """The demo's and phone-sim's key log (enable_keylog) holds session secrets: created 0600 even
    under a permissive umask, and an existing world-readable file is closed down before use."""
    import os
    import stat

    capf, _, ccm, lsc, _ = pki
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)
    old_umask = os.umask(0o000)
    try:
        fresh = tmp_path / "fresh.log"
        _handshake(tls.sccp_server_context(ccm, [capf.cert]),
                   tls.enable_keylog(tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc), fresh))
        existing = tmp_path / "existing.log"
        existing.write_text("")
        os.chmod(existing, 0o644)
        _handshake(tls.sccp_server_context(ccm, [capf.cert]),
                   tls.enable_keylog(tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc), existing))
    finally:
        os.umask(old_umask)
    for path in (fresh, existing):
        assert "CLIENT_RANDOM " in path.read_text()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() != 0,
                    reason="needs root to give the file to another uid")
def test_enable_keylog_on_another_users_file(pki, tmp_path, monkeypatch):
    """A key log owned by another user is never chmod-ed (not ours to change; without root the
    chmod raised a bare PermissionError): one that is 0600 is used as it is, one readable by
    others is refused with a clear KeylogError — session secrets never go into a file others
    can read. $SSLKEYLOGFILE skips such a file instead (a service never stops over diagnostics)."""
    import os
    import stat

    capf, _, ccm, lsc, _ = pki
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)
    private = tmp_path / "theirs-0600.log"
    private.write_text("")
    os.chown(private, 65534, 65534)
    os.chmod(private, 0o600)
    _handshake(tls.sccp_server_context(ccm, [capf.cert]),
               tls.enable_keylog(tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc), private))
    st = os.stat(private)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (65534, 0o600)
    assert "CLIENT_RANDOM " in private.read_text()

    shared = tmp_path / "theirs-0644.log"
    shared.write_text("")
    os.chown(shared, 65534, 65534)
    os.chmod(shared, 0o644)
    ctx = tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc)
    with pytest.raises(tls.KeylogError, match=r"another user \(uid 65534\).*mode 0644"):
        tls.enable_keylog(ctx, shared)
    assert ctx.keylog_filename is None
    st = os.stat(shared)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (65534, 0o644)  # left as its owner set it

    monkeypatch.setenv("SSLKEYLOGFILE", str(shared))
    _handshake(tls.sccp_server_context(ccm, [capf.cert]),
               tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc))
    assert shared.read_text() == ""
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o644


def test_enable_keylog_unopenable_path_is_a_clear_error(pki, tmp_path, monkeypatch):
    """A key log that cannot be opened (missing folder, no permission) is a KeylogError that
    names the path, not a bare OSError traceback."""
    capf, _, ccm, lsc, _ = pki
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)
    missing = tmp_path / "missing-dir" / "keys.log"
    with pytest.raises(tls.KeylogError, match="cannot open the key log .*missing-dir"):
        tls.enable_keylog(tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc), missing)


def test_sslkeylogfile_unwritable_never_breaks_tls(pki, tmp_path, monkeypatch):
    capf, _, ccm, lsc, _ = pki
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "missing-dir" / "keys.log"))
    assert _handshake(tls.sccp_server_context(ccm, [capf.cert]),
                      tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc))


def _try_handshake(server_ctx, client_ctx):
    """The negotiated (version, cipher), or the ssl.SSLError the handshake ended with."""
    import ssl

    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    try:
        for _ in range(10):
            for side in (client, server):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
    except ssl.SSLError as exc:
        return exc
    return client.version(), client.cipher()[0]


def _tls10_phone(pki, cipher):
    """A phone of the source's era: TLS 1.0 only, one suite, with its LSC."""
    import ssl
    import warnings

    _, _, ccm, lsc, _ = pki
    ctx = tls.sccp_phone_context("encrypted" if cipher.startswith("AES") else "authenticated",
                                 [ccm.cert], lsc=lsc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers(f"{cipher}:@SECLEVEL=0")
    return ctx


@pytest.mark.parametrize("cipher,mode", [("AES128-SHA", tls.SccpTransportMode.ENCRYPTED),
                                         ("NULL-SHA", tls.SccpTransportMode.AUTHENTICATED)])
def test_later8_tls10_phone_refused_by_default_and_accepted_with_legacy_tls(pki, cipher, mode):
    """LATER-8: TLS 1.0 with AES128-SHA / NULL-SHA is refused on 2443 unless the cluster enables
    legacy TLS; then it is accepted and still classified per mode (ENC-1 / AUTH-7)."""
    import ssl

    capf, _, ccm, _, _ = pki
    refused = _try_handshake(tls.sccp_server_context(ccm, [capf.cert]), _tls10_phone(pki, cipher))
    assert isinstance(refused, ssl.SSLError)
    version, got = _try_handshake(tls.sccp_server_context(ccm, [capf.cert], legacy_tls=True),
                                  _tls10_phone(pki, cipher))
    assert (version, got) == ("TLSv1", cipher)
    assert tls.transport_mode_of_cipher(got) is mode
    # A modern phone still gets TLS 1.2 from the legacy-enabled listener.
    modern = tls.sccp_phone_context("encrypted", [ccm.cert], lsc=pki[3])
    assert _try_handshake(tls.sccp_server_context(ccm, [capf.cert], legacy_tls=True), modern)[0] == "TLSv1.2"


def test_later8_enable_legacy_tls_hook_on_an_ordinary_server_context(pki):
    """The hook other listeners (CAPF 3804) call: TLS 1.0 AES128-SHA in, TLS 1.2 kept."""
    import ssl
    import warnings

    capf, _, ccm, _, _ = pki
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = client.maximum_version = ssl.TLSVersion.TLSv1
    client.set_ciphers("AES128-SHA:@SECLEVEL=0")
    server = tls.server_context(ccm)
    assert isinstance(_try_handshake(server, client), ssl.SSLError)
    tls.enable_legacy_tls(server)
    assert _try_handshake(server, client) == ("TLSv1", "AES128-SHA")


def test_a_key_log_that_is_no_regular_file_is_refused_untouched(pki, tmp_path, monkeypatch):
    """SSLKEYLOGFILE=/dev/null (a way to 'turn it off') in a root process made root's /dev/null
    0600 — every other user's writes to it failed — because a file of ours is tightened to 0600.
    Only a regular file takes secrets: a device or a FIFO (here ours, mode 0644, with a reader so
    the old open did not wait) is refused, its mode untouched, and TLS still works."""
    import os
    import stat

    capf, _, ccm, lsc, _ = pki
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)
    fifo = tmp_path / "keys.fifo"
    os.mkfifo(fifo, 0o644)
    os.chmod(fifo, 0o644)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(tls.KeylogError, match="not a regular file"):
            tls.enable_keylog(tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc), fifo)
        assert stat.S_IMODE(os.stat(fifo).st_mode) == 0o644
        monkeypatch.setenv("SSLKEYLOGFILE", str(fifo))
        assert _handshake(tls.sccp_server_context(ccm, [capf.cert]),
                          tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc))
        assert stat.S_IMODE(os.stat(fifo).st_mode) == 0o644
    finally:
        os.close(reader)


def test_a_fifo_key_log_without_a_reader_is_a_clear_error_not_a_hang(pki, tmp_path, monkeypatch):
    """Opening a FIFO for writing waits for a reader: a key log path that is one hung the service
    building its TLS context."""
    import os
    import threading

    capf, _, ccm, lsc, _ = pki
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)
    fifo = tmp_path / "keys.fifo"
    os.mkfifo(fifo, 0o600)
    outcome = []

    def attempt():
        try:
            tls.enable_keylog(tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc), fifo)
            outcome.append("used")
        except tls.KeylogError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():   # release the hung open
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        worker.join(5)
        pytest.fail("opening the key log waited for a reader of the FIFO")
    assert outcome and "key log" in outcome[0] and outcome[0] != "used"
