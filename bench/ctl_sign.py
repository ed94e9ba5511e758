"""Benchmark: building + signing a trust list (2, 10, 40 records) and a signed config file,
against the raw RSA PKCS#1 v1.5 signing operation with the same key and digest, in the same run.

    uv run python bench/ctl_sign.py [--quick] [--digest sha1|sha256|sha512]

The ratio (ours / raw) shows how much the format work costs on top of the RSA operation itself;
close to 1.0 means signing is dominated by RSA.
"""

from __future__ import annotations

import argparse
import time

from cryptography.hazmat.primitives.asymmetric import padding

from ccmsec.formats.ctl import Digest, Role, build_ctl, parse_ctl, record_from_certificate
from ccmsec.formats.sgn import sign_file
from ccmsec.pki.ca import create_ca, issue_with_new_key, name
from ccmsec.pki.tokens import FileSigner

TS = 1_700_000_000


def rates(ours, baseline, seconds: float, rounds: int = 8,
          max_iterations: int = 100_000) -> tuple[float, float]:
    """Calls per second of `ours` and `baseline`, measured in alternating slices so that load
    from other processes hits both alike (bounded in time and in count)."""
    ours(), baseline()  # warm up caches
    totals = {ours: [0, 0.0], baseline: [0, 0.0]}
    for _ in range(rounds):
        for fn in (ours, baseline):
            count, start = 0, time.perf_counter()
            deadline = start + seconds / rounds
            while count < max_iterations:
                fn()
                count += 1
                if time.perf_counter() >= deadline:
                    break
            totals[fn][0] += count
            totals[fn][1] += time.perf_counter() - start
    return tuple(n / t for n, t in totals.values())  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (a few seconds)")
    parser.add_argument("--digest", choices=["sha1", "sha256", "sha512"], default="sha1")
    args = parser.parse_args()
    seconds = 0.8 if args.quick else 4.0
    digest = Digest[args.digest.upper()]

    ca = create_ca(name("Bench CA"))
    issued_token = issue_with_new_key(ca, name("SAST-bench"), server=False, client=False)
    token = FileSigner.from_issued(issued_token)
    key = issued_token.key
    servers = [issue_with_new_key(ca, name(f"cm{i}"), "rsa2048").cert for i in range(39)]

    def raw_sign(data: bytes):
        return lambda: key.sign(data, padding.PKCS1v15(), digest.hash())

    print(f"digest {digest.label}, RSA 2048, {seconds:.1f} s per measurement")
    print(f"{'case':<28} {'ours/s':>10} {'raw RSA/s':>10} {'ratio':>7}")
    for count in (2, 10, 40):
        records = [record_from_certificate(token.certificate, Role.TOKEN)]
        records += [record_from_certificate(c, Role.CCM_TFTP, f"cm{i}", f"127.0.1.{i + 1}")
                    for i, c in enumerate(servers[:count - 1])]
        data = build_ctl(records, token, TS, digest)
        signed = parse_ctl(data).signed_bytes()
        ours, baseline = rates(lambda: build_ctl(records, token, TS, digest), raw_sign(signed),
                               seconds)
        print(f"{f'CTL, {count} records ({len(data)} B)':<28} {ours:>10.0f} {baseline:>10.0f} "
              f"{ours / baseline:>7.2f}")

    config = (b'<?xml version="1.0"?><device>' + b"<x>setting</x>" * 280 + b"</device>")
    signed_config = sign_file(config, "SEP0011223344AA.cnf.xml.sgn", token, TS, digest)
    counter = iter(range(10**9))
    ours, baseline = rates(lambda: sign_file(config, f"SEP{next(counter):012X}.cnf.xml.sgn",
                                             token, TS, digest),
                           raw_sign(signed_config), seconds)
    print(f"{f'.sgn config ({len(signed_config)} B)':<28} {ours:>10.0f} {baseline:>10.0f} "
          f"{ours / baseline:>7.2f}")


if __name__ == "__main__":
    main()
