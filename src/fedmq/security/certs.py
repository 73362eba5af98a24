"""A throwaway PKI for trials: a CA, a server certificate, one client certificate per device.

For production, use your own CA; docs/security.md has the equivalent openssl commands.
Files already in the directory are kept, and an existing `ca.pem` + `ca.key` signs new devices.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmq.errors import ConfigError
from fedmq.security.passwords import check_username

SERVER_HOSTS = ("localhost", "127.0.0.1", "::1")
_Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class TrialPki:
    dir: Path
    written: tuple[Path, ...]  # files created by this call (the others already existed)

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    def device(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) of a device."""
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"


def make_trial_pki(
    out_dir: str | Path,
    devices: Iterable[str] = (),
    *,
    hosts: Sequence[str] = SERVER_HOSTS,
    days: int = 365,
) -> TrialPki:
    """Create what is missing in `out_dir`: CA, server (for `hosts`), and device certificates."""
    out = Path(out_dir)
    devices = [check_username(d) for d in devices]
    if {"ca", "server"} & set(devices):
        raise ConfigError("'ca' and 'server' are file names here; pick other device names")
    try:
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        ca_key, ca_cert = _ca(out, days, written)
        pki = TrialPki(out, ())
        if not pki.server_cert.exists():
            sans = [_san(h) for h in hosts]
            _issue(pki.server_cert, pki.server_key, hosts[0], sans, ca_key, ca_cert, days,
                   ExtendedKeyUsageOID.SERVER_AUTH, written)  # fmt: skip
        for name in devices:
            cert, key = pki.device(name)
            if not cert.exists():
                _issue(cert, key, name, [x509.DNSName(name)], ca_key, ca_cert, days,
                       ExtendedKeyUsageOID.CLIENT_AUTH, written)  # fmt: skip
    except OSError as exc:
        raise ConfigError(f"certificates in {out}: {exc}") from exc
    return TrialPki(out, tuple(written))


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _ca(out: Path, days: int, written: list[Path]) -> tuple[_Key, x509.Certificate]:
    cert_path, key_path = out / "ca.pem", out / "ca.key"
    if cert_path.exists() and key_path.exists():
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError as exc:
            raise ConfigError(f"{key_path} / {cert_path}: not a PEM key and certificate") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{key_path}: not an EC key made by `fedmq certs`")
        return key, cert
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmq trial CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(name, name, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, cert_path, key, cert, written)
    return key, cert


def _issue(
    cert_path: Path,
    key_path: Path,
    common_name: str,
    sans: list[x509.GeneralName],
    ca_key: _Key,
    ca_cert: x509.Certificate,
    days: int,
    purpose: x509.ObjectIdentifier,
    written: list[Path],
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = (
        _builder(subject, ca_cert.subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_path, cert_path, key, cert, written)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: _Key, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _write(
    key_path: Path, cert_path: Path, key: _Key, cert: x509.Certificate, written: list[Path]
) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    written += [cert_path, key_path]
