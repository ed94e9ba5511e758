"""Independent-style CAPF peers for tests, written from the wire format (struct, ssl sockets),
sharing no code with `ccmsec.wire.capf` / `ccmsec.aio.capf`, so that a convention mismatch
between our client or server and another implementation shows up.

`StandardClient` behaves like the open-source command-line client: it always sends a password
element (empty when it has none), labels any certificate "LSC" in the nested certificate
element, signs `name | 0x00 | cert` with SHA-1 (element 6) and SHA-512 (element 20, `3 | len |
sig`), RSA as PKCS#1 type 1 over the bare digest made by the `openssl pkeyutl` command, answers a
fetch with reason 1 and its certificate, and knows nothing of commands 16, 22, 23: any command or
element it does not know is an error.

`StandardServer` behaves like the open-source server: its auth request always says auth type 0,
it requires both signatures when it authenticates by certificate, verifies an RSA signature by
recovering the bare digest, and refuses any element it does not know.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

MAGIC = 0x55
# commands
AUTH_REQ, AUTH_RESP, KEYGEN_REQ, KEYGEN_RESP = 1, 2, 3, 4
STORE_REQ, STORE_RESP, FETCH_REQ, FETCH_RESP, DELETE_REQ, DELETE_RESP = 9, 10, 11, 12, 13, 14
END, IN_PROGRESS = 15, 17
# elements
E_REASON, E_REASON_INFO, E_CERT_TYPE, E_CERT, E_SIGNED, E_VERSION, E_AUTH_TYPE = 1, 2, 3, 4, 6, 7, 8
E_PUBKEY, E_KEY_SIZE, E_PASSWORD, E_DEVICE, E_SUDI, E_KEY_TYPE, E_CURVE, E_SHA2 = 9, 10, 11, 13, 16, 17, 18, 20


class PeerError(Exception):
    pass


def frame(command: int, session_id: int, elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(struct.pack(">BH", tag, len(value)) + value for tag, value in elements)
    return struct.pack(">BBIH", MAGIC, command, session_id, len(body)) + body


def read_frame(sock, known: set[int]) -> tuple[int, int, dict[int, bytes]]:
    """One frame; an element outside `known` is an error (as the strict real peers do)."""
    head = _read_exact(sock, 8)
    magic, command, session_id, length = struct.unpack(">BBIH", head)
    if magic != MAGIC:
        raise PeerError(f"bad protocol id {magic}")
    body = _read_exact(sock, length)
    elements, i = {}, 0
    while i < len(body):
        tag, size = struct.unpack_from(">BH", body, i)
        i += 3
        if tag not in known:
            raise PeerError(f"unknown element tag {tag} in command {command}")
        elements[tag] = body[i:i + size]
        i += size
    return command, session_id, elements


def _read_exact(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise PeerError("peer closed the connection")
        data += chunk
    return data


def nested_certificate(der: bytes) -> bytes:
    return struct.pack(">BHBB", 1, len(der) + 2, 0, 1) + der  # always labelled LSC


def unnest(value: bytes) -> bytes:
    return value[5:]


def cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def openssl_rsa_sign_digest(key: rsa.RSAPrivateKey, digest: bytes) -> bytes:
    """PKCS#1 type 1 over the bare digest, by the openssl command (an implementation not ours)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise PeerError("openssl binary not installed")
    with tempfile.TemporaryDirectory() as tmp:
        key_path = Path(tmp) / "key.pem"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        out = subprocess.run([openssl, "pkeyutl", "-sign", "-inkey", str(key_path), "-pkeyopt",
                              "rsa_padding_mode:pkcs1"], input=digest, capture_output=True, timeout=30)
    if out.returncode != 0:
        raise PeerError(f"openssl pkeyutl failed: {out.stderr.decode(errors='replace')}")
    return out.stdout


def sign_both(key, data: bytes) -> tuple[bytes, bytes]:
    if isinstance(key, rsa.RSAPrivateKey):
        sha1 = openssl_rsa_sign_digest(key, hashlib.sha1(data).digest())
        sha512 = openssl_rsa_sign_digest(key, hashlib.sha512(data).digest())
    else:
        sha1 = key.sign(data, ec.ECDSA(hashes.SHA1()))
        sha512 = key.sign(data, ec.ECDSA(hashes.SHA512()))
    return sha1, struct.pack(">BH", 3, len(sha512)) + sha512


def verify_bare(public_key, signature: bytes, data: bytes, algorithm) -> bool:
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            digest = hashlib.new(algorithm.name, data).digest()
            return public_key.recover_data_from_signature(signature, padding.PKCS1v15(), None) == digest
        public_key.verify(signature, data, ec.ECDSA(algorithm))
        return True
    except (InvalidSignature, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# The standard client


@dataclass
class ClientResult:
    outcome: str                 # installed | fetched | deleted | ended
    end_reason: int | None = None
    certificate: x509.Certificate | None = None
    key: object | None = None
    commands: list[int] = field(default_factory=list)


class StandardClient:
    KNOWN = {E_REASON, E_REASON_INFO, E_CERT_TYPE, E_CERT, E_VERSION, E_AUTH_TYPE, E_KEY_SIZE, E_KEY_TYPE, E_CURVE}

    def __init__(self, host: str, port: int, capf_cert: x509.Certificate, device: str, *,
                 password: str | None = None, certificate: x509.Certificate | None = None, key=None,
                 held: x509.Certificate | None = None, source: str | None = None):
        self.host, self.port, self.device = host, port, device
        self.password, self.certificate, self.key = password, certificate, key
        self.held = held  # what it hands over on a fetch
        self.source = source
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.load_verify_locations(cadata=capf_cert.public_bytes(serialization.Encoding.PEM).decode())

    def run(self, timeout: float = 20.0) -> ClientResult:
        raw = socket.create_connection((self.host, self.port), timeout=timeout,
                                       source_address=(self.source, 0) if self.source else None)
        with self.ctx.wrap_socket(raw) as sock:
            return self._session(sock)

    def _session(self, sock) -> ClientResult:
        result = ClientResult("ended")
        command, sid, el = read_frame(sock, self.KNOWN)
        result.commands.append(command)
        if command != AUTH_REQ or el.get(E_VERSION) != b"\x03":
            raise PeerError(f"expected an auth request, got {command}")
        elements = [(E_REASON, b"\x01"), (E_VERSION, b"\x03"), (E_DEVICE, cstring(self.device)),
                    (E_PASSWORD, cstring(self.password or ""))]
        if self.certificate is not None:
            der = self.certificate.public_bytes(serialization.Encoding.DER)
            sha1, sha2 = sign_both(self.key, self.device.encode() + b"\x00" + der)
            elements += [(E_CERT, nested_certificate(der)), (E_SIGNED, sha1), (E_SHA2, sha2)]
        sock.sendall(frame(AUTH_RESP, sid, elements))
        while True:
            command, _, el = read_frame(sock, self.KNOWN)
            result.commands.append(command)
            if command == END:
                result.end_reason = el[E_REASON][0]
                return result
            if command == KEYGEN_REQ:
                sock.sendall(frame(IN_PROGRESS, sid, []))
                if el[E_KEY_TYPE] == b"\x00":
                    key = rsa.generate_private_key(65537, struct.unpack(">H", el[E_KEY_SIZE])[0])
                else:
                    key = ec.generate_private_key([ec.SECP256R1, ec.SECP384R1, ec.SECP521R1][el[E_CURVE][0]]())
                result.key = key
                spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
                sock.sendall(frame(KEYGEN_RESP, sid, [(E_PUBKEY, spki)]))
            elif command == STORE_REQ:
                result.certificate = x509.load_der_x509_certificate(unnest(el[E_CERT]))
                result.outcome = "installed"
                sock.sendall(frame(STORE_RESP, sid, [(E_REASON, b"\x01")]))
            elif command == FETCH_REQ:
                held = self.held or self.certificate
                if held is None:
                    sock.sendall(frame(FETCH_RESP, sid, [(E_REASON, b"\x07")]))
                else:
                    result.outcome = "fetched"
                    sock.sendall(frame(FETCH_RESP, sid, [
                        (E_REASON, b"\x01"), (E_CERT, nested_certificate(held.public_bytes(serialization.Encoding.DER)))]))
            elif command == DELETE_REQ:
                result.outcome = "deleted"
                sock.sendall(frame(DELETE_RESP, sid, [(E_REASON, b"\x01")]))
            else:
                raise PeerError(f"unexpected command {command}")


# ---------------------------------------------------------------------------------------------
# The standard server


@dataclass
class ServerVisit:
    device: str
    password: str | None
    certificate_auth: bool
    outcome: str
    fetched: x509.Certificate | None = None
    fetch_reason: int | None = None
    error: str = ""


class StandardServer:
    """One CAPF server thread on 127.0.0.1. `operations[device]`: (operation, auth) where auth is
    None (anything goes), ("password", digits) or "certificate" (both signatures required, chain
    to one of `trusted`). Install issues an RSA-2048 LSC signed with the CAPF key."""

    KNOWN = {E_REASON, E_REASON_INFO, E_CERT_TYPE, E_CERT, E_SIGNED, E_VERSION, E_PASSWORD, E_DEVICE,
             E_PUBKEY, E_SUDI, E_SHA2}

    def __init__(self, capf_cert: x509.Certificate, capf_key, trusted: list[x509.Certificate]):
        self.capf_cert, self.capf_key, self.trusted = capf_cert, capf_key, trusted
        self.operations: dict[str, tuple[str, object]] = {}
        self.visits: list[ServerVisit] = []
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
            cert.write_bytes(capf_cert.public_bytes(serialization.Encoding.PEM))
            key.write_bytes(capf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
            self.ctx.load_cert_chain(str(cert), str(key))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._sid = 1000

    async def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            raw.settimeout(10)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as sock:
                    self._sid += 1
                    self._session(sock, self._sid)
            except (PeerError, OSError, ssl.SSLError) as exc:
                self.visits.append(ServerVisit("?", None, False, "error", error=str(exc)))

    def _session(self, sock, sid: int) -> None:
        sock.sendall(frame(AUTH_REQ, sid, [(E_VERSION, b"\x03"), (E_AUTH_TYPE, b"\x00")]))
        command, got_sid, el = read_frame(sock, self.KNOWN)
        if command != AUTH_RESP or got_sid != sid:
            raise PeerError(f"expected an auth response, got {command}")
        device = el[E_DEVICE][:-1].decode()
        password = el[E_PASSWORD][:-1].decode() if E_PASSWORD in el else None
        visit = ServerVisit(device, password, E_CERT in el, "refused")
        self.visits.append(visit)
        operation, auth = self.operations.get(device, ("none", None))
        try:
            if isinstance(auth, tuple) and password != auth[1]:
                raise PeerError("wrong password")
            if auth == "certificate":
                self._verify_certificate_auth(device, el)
        except PeerError as exc:
            visit.error = str(exc)
            sock.sendall(frame(END, sid, [(E_REASON, b"\x07")]))
            return
        if operation == "install":
            sock.sendall(frame(KEYGEN_REQ, sid, [(E_KEY_TYPE, b"\x00"), (E_KEY_SIZE, struct.pack(">H", 2048))]))
            command, _, el = read_frame(sock, self.KNOWN)
            if command == IN_PROGRESS:
                command, _, el = read_frame(sock, self.KNOWN)
            public_key = serialization.load_der_public_key(el[E_PUBKEY])
            lsc = self._issue(device, public_key)
            sock.sendall(frame(STORE_REQ, sid, [(E_CERT_TYPE, b"\x01"),
                                                (E_CERT, nested_certificate(lsc.public_bytes(serialization.Encoding.DER)))]))
            command, _, el = read_frame(sock, self.KNOWN)
            if command != STORE_RESP or el.get(E_REASON) != b"\x01":
                raise PeerError("store refused")
            visit.outcome = "installed"
        elif operation == "fetch":
            sock.sendall(frame(FETCH_REQ, sid, []))
            command, _, el = read_frame(sock, self.KNOWN)
            visit.fetch_reason = el[E_REASON][0] if E_REASON in el else None
            if E_CERT in el:
                visit.fetched = x509.load_der_x509_certificate(unnest(el[E_CERT]))
            visit.outcome = "fetched"
        elif operation == "delete":
            sock.sendall(frame(DELETE_REQ, sid, []))
            read_frame(sock, self.KNOWN)
            visit.outcome = "deleted"
        else:
            visit.outcome = "nothing"
            sock.sendall(frame(END, sid, [(E_REASON, b"\x00")]))
            return
        self.operations[device] = ("none", auth)  # carried out: nothing more to do
        sock.sendall(frame(END, sid, [(E_REASON, b"\x01")]))

    def _verify_certificate_auth(self, device: str, el: dict[int, bytes]) -> None:
        if E_CERT not in el or E_SIGNED not in el or E_SHA2 not in el:
            raise PeerError("certificate authentication needs the certificate and both signatures")
        cert = x509.load_der_x509_certificate(unnest(el[E_CERT]))
        if not any(cert.issuer == ca.subject and _signed_by(cert, ca) for ca in self.trusted):
            raise PeerError("unknown certificate issuer")
        hash_id, length = struct.unpack_from(">BH", el[E_SHA2])
        if hash_id != 3:
            raise PeerError(f"SHA2 signature with hash {hash_id}, not SHA-512")
        data = device.encode() + b"\x00" + cert.public_bytes(serialization.Encoding.DER)
        if not verify_bare(cert.public_key(), el[E_SIGNED], data, hashes.SHA1()):
            raise PeerError("SHA-1 signed data does not verify")
        if not verify_bare(cert.public_key(), el[E_SHA2][3:3 + length], data, hashes.SHA512()):
            raise PeerError("SHA-512 signed data does not verify")

    def _issue(self, device: str, public_key) -> x509.Certificate:
        now = dt.datetime.now(dt.timezone.utc)
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
                .issuer_name(self.capf_cert.subject).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(self.capf_key, hashes.SHA256()))


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False
