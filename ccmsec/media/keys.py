"""SRTP master values between their three carriers: the `ccmsec.v1.KeyMaterial` message (key
manager, gateway control), the SCCP encryption-info block (OpenReceiveChannel /
StartMediaTransmission) and `MasterKey` (what libsrtp is given). Suite numbers are the same in all
three, so only sizes are checked here."""

from __future__ import annotations

from ccmsec.media.srtp import MasterKey, SrtpSuite
from ccmsec.wire.sccp import EncryptionInfo
from ccmsec_proto import common_pb2


def to_proto(key: MasterKey) -> common_pb2.KeyMaterial:
    return common_pb2.KeyMaterial(suite=int(key.suite), master_key=key.key, master_salt=key.salt)


def from_proto(material: common_pb2.KeyMaterial) -> MasterKey:
    """ValueError (clear text) for an unknown suite or wrong sizes."""
    return MasterKey(SrtpSuite.parse(material.suite), bytes(material.master_key), bytes(material.master_salt))


def to_encryption_info(key: MasterKey | None) -> EncryptionInfo:
    """The 48-byte SCCP block; no key = algorithm 0 (none). AES-256 keys do not fit the block."""
    if key is None:
        return EncryptionInfo()
    if key.suite.key_length > EncryptionInfo.MAX_KEY:
        raise ValueError(f"{key.suite.name} keys do not fit the SCCP encryption-info block")
    return EncryptionInfo(int(key.suite), key.key, key.salt)


def from_encryption_info(info: EncryptionInfo) -> MasterKey | None:
    if not info.is_encrypted:
        return None
    return MasterKey(SrtpSuite.parse(info.algorithm), info.key, info.salt)


# What fits an SCCP encryption-info block (16-byte keys): every suite but AES-256-GCM.
SCCP_SUITES = frozenset(s for s in SrtpSuite if s.key_length <= EncryptionInfo.MAX_KEY)
