"""The cluster's own TLS material: a throwaway CA, one server certificate per replica, one client
certificate for the balancer.

Replicas listen with TLS and require a client certificate signed by this CA (mutual TLS), so on
a shared host only the balancer (or whoever holds a CA-signed key) reaches them directly; the
balancer verifies each replica's certificate against the CA and its name (``replica-N``). The
CA's private key stays in the PKI directory (mode 0600) so that ``broker cluster up`` can sign a
certificate for a replica added later; an operator of a real deployment brings certificates
from their own CA instead (``examples/cluster/README.md``).

Keys are ECDSA P-256; certificates last ``VALID_DAYS``. Existing files are reused while they are
valid for at least another day and cover every name asked for; otherwise they are made again.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.cluster.settings import replica_name

VALID_DAYS: Final = 90
_RENEW_BEFORE: Final = dt.timedelta(days=1)
CA_NAME: Final = "model-broker cluster CA (throwaway)"
BALANCER_NAME: Final = "balancer"


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path

    def pem_bundle(self) -> bytes:
        """Certificate then key, as HAProxy's ``crt`` wants them in one file."""
        return self.cert.read_bytes() + self.key.read_bytes()


@dataclass(frozen=True)
class ClusterPki:
    """Where the cluster's TLS files are (see the module docstring)."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    def replica(self, index: int) -> KeyPair:
        name = replica_name(index)
        return KeyPair(self.directory / f"{name}.pem", self.directory / f"{name}.key")

    @property
    def balancer(self) -> KeyPair:
        return KeyPair(
            self.directory / f"{BALANCER_NAME}.pem", self.directory / f"{BALANCER_NAME}.key"
        )

    @property
    def balancer_bundle(self) -> Path:
        """The balancer's certificate and key in one file (HAProxy ``crt``), mode 0600."""
        return self.directory / f"{BALANCER_NAME}-bundle.pem"


def ensure_pki(directory: Path, replicas: int, *, now: dt.datetime | None = None) -> ClusterPki:
    """Create (or reuse, while valid) the CA, ``replicas`` server certificates and the
    balancer's client certificate under ``directory``."""
    now = now or dt.datetime.now(dt.UTC)
    pki = ClusterPki(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    if not _still_valid(pki.ca_cert, now, ()) or not pki.ca_key.exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        _write_key(pki.ca_key, ca_key)
        _write_cert(pki.ca_cert, _ca_certificate(ca_key, now))
        for stale in directory.glob("*.pem"):  # signed by the CA just replaced
            if stale != pki.ca_cert:
                stale.unlink()
    ca_key_loaded = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key_loaded, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{pki.ca_key} is not an EC private key")
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    for index in range(1, replicas + 1):
        name = replica_name(index)
        _ensure_leaf(pki.replica(index), ca_key_loaded, ca_cert, name, server=True, now=now)
    _ensure_leaf(pki.balancer, ca_key_loaded, ca_cert, BALANCER_NAME, server=False, now=now)
    _write_private(pki.balancer_bundle, pki.balancer.pem_bundle())
    return pki


def _still_valid(cert_path: Path, now: dt.datetime, names: tuple[str, ...]) -> bool:
    if not cert_path.exists():
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        return False
    if cert.not_valid_after_utc - _RENEW_BEFORE < now:
        return False
    if names:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        if not set(names) <= set(san.get_values_for_type(x509.DNSName)):
            return False
    return True


def _ensure_leaf(
    pair: KeyPair,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    name: str,
    *,
    server: bool,
    now: dt.datetime,
) -> None:
    if pair.key.exists() and _still_valid(pair.cert, now, (name,)):
        return
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    names: list[x509.GeneralName] = [x509.DNSName(name)]
    if server:
        names += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key, now)
        .issuer_name(ca_cert.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(pair.key, key)
    _write_cert(pair.cert, cert)


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    return (
        _builder(subject, key, now)
        .issuer_name(subject)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def _builder(
    subject: x509.Name, key: ec.EllipticCurvePrivateKey, now: dt.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(path, pem)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.replace(path)
