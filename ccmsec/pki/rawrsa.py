"""RSA PKCS#1 v1.5 signature over a bare digest (no DigestInfo), made by OpenSSL.

CAPF phones sign their authentication data this way: PKCS#1 type-1 padding around the digest
alone, what OpenSSL's `EVP_PKEY_sign` produces when no message digest is set on the context.
`cryptography` verifies such signatures (`recover_data_from_signature(sig, PKCS1v15(), None)`)
but has no call that makes one, so this module asks the system's libcrypto through ctypes —
the real OpenSSL primitive, not a hand-made one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

_RSA_PKCS1_PADDING = 1
_EVP_PKEY_RSA = 6
_EVP_PKEY_CTRL_RSA_PADDING = 0x1000 + 1  # EVP_PKEY_ALG_CTRL + 1


class RawRsaError(RuntimeError):
    """libcrypto is missing or refused the operation."""


@functools.cache
def _libcrypto() -> ctypes.CDLL:
    found = ctypes.util.find_library("crypto")
    candidates = [found] if found else []
    candidates += ["libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.dylib"]
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise RawRsaError("OpenSSL's libcrypto was not found (install libssl3) — needed to sign "
                          "CAPF authentication data with an RSA key")
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.BIO_new_mem_buf.argtypes, lib.BIO_new_mem_buf.restype = [ctypes.c_char_p, ctypes.c_int], vp
    lib.BIO_free.argtypes, lib.BIO_free.restype = [vp], ctypes.c_int
    lib.PEM_read_bio_PrivateKey.argtypes, lib.PEM_read_bio_PrivateKey.restype = [vp, vp, vp, vp], vp
    lib.EVP_PKEY_free.argtypes, lib.EVP_PKEY_free.restype = [vp], None
    lib.EVP_PKEY_CTX_new.argtypes, lib.EVP_PKEY_CTX_new.restype = [vp, vp], vp
    lib.EVP_PKEY_CTX_free.argtypes, lib.EVP_PKEY_CTX_free.restype = [vp], None
    lib.EVP_PKEY_sign_init.argtypes, lib.EVP_PKEY_sign_init.restype = [vp], ctypes.c_int
    # A real function in OpenSSL 3, a macro over EVP_PKEY_CTX_ctrl in 1.1: the ctrl works in both.
    lib.EVP_PKEY_CTX_ctrl.argtypes = [vp, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, vp]
    lib.EVP_PKEY_CTX_ctrl.restype = ctypes.c_int
    lib.EVP_PKEY_sign.argtypes = [vp, ctypes.c_char_p, ctypes.POINTER(sz), ctypes.c_char_p, sz]
    lib.EVP_PKEY_sign.restype = ctypes.c_int
    return lib


def sign_digest_pkcs1(private_key: rsa.RSAPrivateKey, digest: bytes) -> bytes:
    """`digest` wrapped in PKCS#1 type-1 padding and signed with `private_key` (no DigestInfo)."""
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise TypeError("an RSA private key is needed")
    if not 1 <= len(digest) <= private_key.key_size // 8 - 11:
        raise ValueError(f"a {len(digest)}-byte digest does not fit a {private_key.key_size}-bit PKCS#1 block")
    lib = _libcrypto()
    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    bio = pkey = ctx = None
    try:
        bio = lib.BIO_new_mem_buf(pem, len(pem))
        pkey = lib.PEM_read_bio_PrivateKey(bio, None, None, None) if bio else None
        ctx = lib.EVP_PKEY_CTX_new(pkey, None) if pkey else None
        if not ctx or lib.EVP_PKEY_sign_init(ctx) != 1:
            raise RawRsaError("libcrypto could not load the RSA key for signing")
        if lib.EVP_PKEY_CTX_ctrl(ctx, _EVP_PKEY_RSA, -1, _EVP_PKEY_CTRL_RSA_PADDING, _RSA_PKCS1_PADDING, None) <= 0:
            raise RawRsaError("libcrypto refused PKCS#1 v1.5 padding")
        size = ctypes.c_size_t(private_key.key_size // 8)
        out = ctypes.create_string_buffer(size.value)
        if lib.EVP_PKEY_sign(ctx, out, ctypes.byref(size), digest, len(digest)) != 1:
            raise RawRsaError("libcrypto could not sign the digest")
        return out.raw[:size.value]
    finally:
        if ctx:
            lib.EVP_PKEY_CTX_free(ctx)
        if pkey:
            lib.EVP_PKEY_free(pkey)
        if bio:
            lib.BIO_free(bio)
