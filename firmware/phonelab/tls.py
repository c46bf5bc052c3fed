"""A lab certificate authority: CA, server certificates and deliberately bad ones (SPEC §8).

Owns: key and certificate files under the directory it is given, made with the `openssl`
command line (EC P-256 keys, SHA-256 signatures, short validity). A certificate for the
lab PBX names its IP addresses and DNS names in subjectAltName, which is what TLS clients
verify (the CN is ignored by modern clients).
Must not touch: any file outside its directory, and the system trust store.

Bad certificates for negative tests: `issue(..., sans=[wrong name])` (right CA, wrong
name) and `self_signed(...)` (right name, unknown issuer).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from phonelab.errors import LabError

VALID_DAYS = 30


@dataclass(frozen=True)
class TlsFiles:
    """PEM files a TLS server needs, and the CA a client verifies it with."""

    #: The server certificate (leaf only).
    cert: Path
    #: Its private key (unencrypted).
    key: Path
    #: The CA certificate that signed `cert`.
    ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise LabError(f"tls: openssl {args[0]} failed: {done.stderr.strip()}")


def san_entry(name: str) -> str:
    """`IP:<addr>` for an IP address, `DNS:<name>` otherwise."""
    try:
        ip_address(name)
    except ValueError:
        return f"DNS:{name}"
    return f"IP:{name}"


def _new_key(path: Path, cwd: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path), cwd=cwd)  # fmt: skip
    path.chmod(0o600)


class CertAuthority:
    """A CA whose key lives in `directory`; issues server certificates."""

    def __init__(self, directory: Path, name: str) -> None:
        """Use `create()`; this wraps files that already exist."""
        self.directory = Path(directory)
        self.name = name
        self.cert = self.directory / f"{name}.crt"
        self.key = self.directory / f"{name}.key"

    @classmethod
    def create(cls, directory: Path, name: str = "phoned-lab-ca") -> CertAuthority:
        """Make a new CA (key + self-signed CA certificate) in `directory`.

        Raises:
            LabError: openssl failed.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ca = cls(directory, name)
        _new_key(ca.key, directory)
        _openssl("req", "-x509", "-new", "-key", str(ca.key), "-out", str(ca.cert),
                 "-days", str(VALID_DAYS), "-subj", f"/CN={name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)  # fmt: skip
        return ca

    def issue(self, name: str, sans: Sequence[str]) -> TlsFiles:
        """A server certificate for `sans` (IP addresses and DNS names) signed by this CA.

        Raises:
            LabError: no SAN given, or openssl failed.
        """
        if not sans:
            raise LabError(f"tls: certificate {name} needs at least one name")
        key, csr = self.directory / f"{name}.key", self.directory / f"{name}.csr"
        cert, ext = self.directory / f"{name}.crt", self.directory / f"{name}.ext"
        _new_key(key, self.directory)
        _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={sans[0]}",
                 cwd=self.directory)  # fmt: skip
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            f"subjectAltName={','.join(san_entry(s) for s in sans)}\n"
        )
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-CAcreateserial", "-out", str(cert), "-days", str(VALID_DAYS),
                 "-extfile", str(ext), cwd=self.directory)  # fmt: skip
        return TlsFiles(cert=cert, key=key, ca=self.cert)


def self_signed(directory: Path, name: str, sans: Sequence[str]) -> TlsFiles:
    """A certificate for `sans` signed by a throwaway CA nobody trusts (refuse it).

    Its `ca` is that rogue CA (under `directory/<name>-rogue-ca`): verifying against the
    lab CA fails with "unable to get local issuer certificate".
    """
    rogue = CertAuthority.create(Path(directory) / f"{name}-rogue-ca", f"{name}-rogue-ca")
    return rogue.issue(name, sans)
