"""Call control's phone-certificate trust, following the offline CA file at runtime.

The CAPF CA and the manufacturer CA never change while callmanager runs; the third-party CA of
offline-CA mode (`DATA/pki/lsc-third-party-ca.crt`, written by `ccmsec capf set-ca`) may appear or
change at any time. `PhoneTrustWatcher` stats that file (one `os.stat`, no read, while unchanged)
whenever trust is needed: at each TLS handshake on 2443 and at each Register.

The 2443 listener keeps one SSLContext for its lifetime (asyncio binds it to the listening socket),
so the watcher installs an SNI callback on it: OpenSSL runs that callback in every handshake, with or
without SNI, and it moves the connection to the context built for the current trust before the
client certificate is verified. A changed file therefore applies to the next connection, with no
restart and no effect on phones already connected.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path

from cryptography import x509

from ccmsec.pki.ca import Issued, fingerprint_sha256
from ccmsec.pki.lsc import LscError, check_third_party_ca, load_third_party_ca, third_party_ca_path
from ccmsec.pki.tls import sccp_server_context

from .registration import PhoneTrust

log = logging.getLogger("ccmsec.callmanager")

FileStamp = tuple[int, int, int] | None  # (mtime_ns, size, inode), None when the file is absent


def _stamp(path: Path) -> FileStamp:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class PhoneTrustWatcher:
    def __init__(self, identity: Issued, base: PhoneTrust, pki_dir: Path | None):
        """`base`: the fixed CAPF and manufacturer CAs. `pki_dir`: where the third-party CA file
        lives (None: never look for one)."""
        self.identity = identity
        self.base = PhoneTrust(base.capf, base.manufacturer)
        self.path = third_party_ca_path(pki_dir) if pki_dir is not None else None
        self._lock = threading.Lock()  # handshakes may run on other threads (to_thread users)
        self._stamp: FileStamp = None
        self._trust = self.base
        self.legacy_tls = False  # LATER-8: TLS 1.0 too (the cluster setting, see legacy_tls.py)
        self._context = sccp_server_context(identity, self.base.tls_anchors)
        self.reloads = 0
        self.problem = ""  # why the file on disk is not trusted, when it is not
        self.refresh()
        # The listening context: only its SNI callback matters after start-up.
        self.listening_context = self._context
        self.listening_context.sni_callback = self._on_handshake

    # --- the current trust ----------------------------------------------------------------------
    def current(self) -> PhoneTrust:
        self.refresh()
        return self._trust

    def context(self) -> ssl.SSLContext:
        self.refresh()
        return self._context

    def refresh(self) -> bool:
        """Rebuild trust if the file changed since the last look; True when it was rebuilt."""
        if self.path is None:
            return False
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        with self._lock:
            if stamp == self._stamp:
                return False
            third, problem = self._read()
            trust = PhoneTrust(self.base.capf, self.base.manufacturer, third)
            context = sccp_server_context(self.identity, trust.tls_anchors, legacy_tls=self.legacy_tls)
            self._trust, self._context, self._stamp = trust, context, stamp
            self.problem = problem
            self.reloads += 1
        if third is not None:
            log.info("LSCs from the third-party CA accepted", extra={
                "ca_subject": third.subject.rfc4514_string(), "ca_sha256": fingerprint_sha256(third)})
        elif problem:
            log.error("third-party CA file not trusted", extra={"path": str(self.path), "error": problem})
        elif self.reloads > 1:
            log.info("third-party CA removed; only CAPF LSCs and MICs accepted")
        return True

    def _read(self) -> tuple[x509.Certificate | None, str]:
        """The third-party CA, or None and why not. A bad file is not trusted (fail closed)."""
        try:
            cert = load_third_party_ca(self.path.parent)
            if cert is not None:
                check_third_party_ca(cert)
            return cert, ""
        except LscError as exc:
            return None, str(exc)
        except OSError as exc:
            return None, f"{self.path}: {exc}"

    def set_legacy_tls(self, enabled: bool) -> ssl.SSLContext:
        """LATER-8: rebuild the contexts with (or without) TLS 1.0 and return the new listening
        context. The protocol versions a connection may use are fixed when it is accepted, so
        the listener must switch contexts, not only the SNI callback."""
        with self._lock:
            self.legacy_tls = enabled
            self._context = sccp_server_context(self.identity, self._trust.tls_anchors,
                                                legacy_tls=enabled)
            listening = sccp_server_context(self.identity, self._trust.tls_anchors,
                                            legacy_tls=enabled)
        listening.sni_callback = self._on_handshake
        self.listening_context = listening
        return listening

    # --- TLS --------------------------------------------------------------------------------------
    def _on_handshake(self, ssl_object: ssl.SSLObject, server_name: str | None,
                      context: ssl.SSLContext) -> None:
        try:
            current = self.context()
        except Exception:  # never break the handshake on a watcher fault: keep the context in use
            log.exception("phone trust refresh failed")
            return None
        if current is not context:
            ssl_object.context = current
        return None
