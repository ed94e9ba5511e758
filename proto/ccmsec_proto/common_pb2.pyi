from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceSecurityMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_SECURITY_MODE_UNSPECIFIED: _ClassVar[DeviceSecurityMode]
    NON_SECURE: _ClassVar[DeviceSecurityMode]
    AUTHENTICATED: _ClassVar[DeviceSecurityMode]
    ENCRYPTED: _ClassVar[DeviceSecurityMode]

class ClusterSecurityMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLUSTER_SECURITY_MODE_UNSPECIFIED: _ClassVar[ClusterSecurityMode]
    CLUSTER_NON_SECURE: _ClassVar[ClusterSecurityMode]
    CLUSTER_MIXED: _ClassVar[ClusterSecurityMode]

class CertificateRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_TOKEN: _ClassVar[CertificateRole]
    ROLE_CCM: _ClassVar[CertificateRole]
    ROLE_CCM_TFTP: _ClassVar[CertificateRole]
    ROLE_TFTP: _ClassVar[CertificateRole]
    ROLE_CAPF: _ClassVar[CertificateRole]
    ROLE_APP_SERVER: _ClassVar[CertificateRole]
    ROLE_TVS: _ClassVar[CertificateRole]
    ROLE_LSC: _ClassVar[CertificateRole]
    ROLE_MIC: _ClassVar[CertificateRole]
    ROLE_SRST: _ClassVar[CertificateRole]
    ROLE_HTTPS: _ClassVar[CertificateRole]
    ROLE_SERVICE: _ClassVar[CertificateRole]

class CryptoSuite(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CRYPTO_SUITE_NONE: _ClassVar[CryptoSuite]
    AES_CM_128_HMAC_SHA1_32: _ClassVar[CryptoSuite]
    AES_CM_128_HMAC_SHA1_80: _ClassVar[CryptoSuite]
    AEAD_AES_128_GCM: _ClassVar[CryptoSuite]
    AEAD_AES_256_GCM: _ClassVar[CryptoSuite]
DEVICE_SECURITY_MODE_UNSPECIFIED: DeviceSecurityMode
NON_SECURE: DeviceSecurityMode
AUTHENTICATED: DeviceSecurityMode
ENCRYPTED: DeviceSecurityMode
CLUSTER_SECURITY_MODE_UNSPECIFIED: ClusterSecurityMode
CLUSTER_NON_SECURE: ClusterSecurityMode
CLUSTER_MIXED: ClusterSecurityMode
ROLE_TOKEN: CertificateRole
ROLE_CCM: CertificateRole
ROLE_CCM_TFTP: CertificateRole
ROLE_TFTP: CertificateRole
ROLE_CAPF: CertificateRole
ROLE_APP_SERVER: CertificateRole
ROLE_TVS: CertificateRole
ROLE_LSC: CertificateRole
ROLE_MIC: CertificateRole
ROLE_SRST: CertificateRole
ROLE_HTTPS: CertificateRole
ROLE_SERVICE: CertificateRole
CRYPTO_SUITE_NONE: CryptoSuite
AES_CM_128_HMAC_SHA1_32: CryptoSuite
AES_CM_128_HMAC_SHA1_80: CryptoSuite
AEAD_AES_128_GCM: CryptoSuite
AEAD_AES_256_GCM: CryptoSuite

class Certificate(_message.Message):
    __slots__ = ("der", "serial", "subject", "issuer", "role", "not_before_unix", "not_after_unix", "fingerprint_sha256", "dns_name", "ipv4")
    DER_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_UNIX_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    DNS_NAME_FIELD_NUMBER: _ClassVar[int]
    IPV4_FIELD_NUMBER: _ClassVar[int]
    der: bytes
    serial: str
    subject: str
    issuer: str
    role: CertificateRole
    not_before_unix: int
    not_after_unix: int
    fingerprint_sha256: str
    dns_name: str
    ipv4: str
    def __init__(self, der: _Optional[bytes] = ..., serial: _Optional[str] = ..., subject: _Optional[str] = ..., issuer: _Optional[str] = ..., role: _Optional[_Union[CertificateRole, str]] = ..., not_before_unix: _Optional[int] = ..., not_after_unix: _Optional[int] = ..., fingerprint_sha256: _Optional[str] = ..., dns_name: _Optional[str] = ..., ipv4: _Optional[str] = ...) -> None: ...

class KeyMaterial(_message.Message):
    __slots__ = ("suite", "master_key", "master_salt", "key_derivation_rate")
    SUITE_FIELD_NUMBER: _ClassVar[int]
    MASTER_KEY_FIELD_NUMBER: _ClassVar[int]
    MASTER_SALT_FIELD_NUMBER: _ClassVar[int]
    KEY_DERIVATION_RATE_FIELD_NUMBER: _ClassVar[int]
    suite: CryptoSuite
    master_key: bytes
    master_salt: bytes
    key_derivation_rate: int
    def __init__(self, suite: _Optional[_Union[CryptoSuite, str]] = ..., master_key: _Optional[bytes] = ..., master_salt: _Optional[bytes] = ..., key_derivation_rate: _Optional[int] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServiceStatus(_message.Message):
    __slots__ = ("role", "node", "activated", "state", "details", "started_unix")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    role: str
    node: str
    activated: bool
    state: str
    details: _containers.ScalarMap[str, str]
    started_unix: int
    def __init__(self, role: _Optional[str] = ..., node: _Optional[str] = ..., activated: _Optional[bool] = ..., state: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ..., started_unix: _Optional[int] = ...) -> None: ...
