"""The LSC issuer the CAPF port uses, as the capf service and its acceptor processes load it:
the CAPF CA signs LSCs; phones' MICs are checked against the manufacturer CA and LSCs against
the CAPF CA or the imported third-party CA — the manufacturer CA read from DATA/pki, the third-party
CA from CAPF's own folder (DATA/capf, which only CAPF writes), each when it appears or changes,
since they may be created after CAPF started."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from ccmsec.pki.ca import Issued
from ccmsec.pki.lsc import LscIssuer, load_third_party_ca, third_party_ca_path
from ccmsec.wire.capf import CertType

MANUFACTURER_CA = "manufacturer-ca.crt"


class ServiceLscIssuer(LscIssuer):
    """LscIssuer whose manufacturer CA (for MIC authentication) is read from DATA/pki when it
    appears or changes: the factory CA may be created after CAPF started."""

    def __init__(self, capf_ca: Issued, manufacturer_ca_path: Path, capf_dir: Path, **kw):
        super().__init__(capf_ca, (), **kw)
        self._mfr_path = manufacturer_ca_path
        self._mfr_stamp: tuple[int, int] | None = None
        self._third_path = third_party_ca_path(capf_dir)  # CAPF's own folder, nobody else's
        self._third_stamp: tuple[int, int] | None = None

    def _refresh_third_party(self) -> None:
        # Offline CA: an LSC signed by the imported third-party CA authenticates like a CAPF one.
        try:
            st = self._third_path.stat()
        except FileNotFoundError:
            self.third_party_roots, self._third_stamp = [], None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._third_stamp:
            ca = load_third_party_ca(self._third_path.parent)
            self.third_party_roots = [ca] if ca is not None else []
            self._third_stamp = stamp

    def _refresh_manufacturer(self) -> None:
        try:
            st = self._mfr_path.stat()
        except FileNotFoundError:
            self.manufacturer_roots, self._mfr_stamp = [], None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._mfr_stamp:
            self.manufacturer_roots = x509.load_pem_x509_certificates(self._mfr_path.read_bytes())
            self._mfr_stamp = stamp

    def verify_device_certificate(self, device_name: str, cert_type: CertType, cert: x509.Certificate) -> None:
        if cert_type is CertType.MIC:
            self._refresh_manufacturer()
        else:
            self._refresh_third_party()
        super().verify_device_certificate(device_name, cert_type, cert)
