"""The cluster's throwaway PKI: every certificate chains to the CA and names what it must."""

from __future__ import annotations

import contextlib
import datetime as dt
import ssl
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from broker.cluster.tls import ensure_pki


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_replica_and_balancer_certificates_verify_against_the_ca(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", 2)
    ca = _cert(pki.ca_cert)
    for index in (1, 2):
        leaf = _cert(pki.replica(index).cert)
        leaf.verify_directly_issued_by(ca)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert f"replica-{index}" in names.get_values_for_type(x509.DNSName)
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    balancer = _cert(pki.balancer.cert)
    balancer.verify_directly_issued_by(ca)
    usage = balancer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_a_tls_client_trusting_only_the_ca_accepts_a_replica_by_name(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", 1)
    client = ssl.create_default_context(cafile=str(pki.ca_cert))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki.replica(1).cert, pki.replica(1).key)
    server.load_verify_locations(cafile=str(pki.ca_cert))
    server.verify_mode = ssl.CERT_REQUIRED
    client.load_cert_chain(pki.balancer.cert, pki.balancer.key)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname="replica-1")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # pump the handshake between the two memory BIOs
        for end in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert c.getpeercert()["subjectAltName"][0] == ("DNS", "replica-1")
    assert s.getpeercert() is not None  # the server saw the balancer's client certificate


def test_private_keys_are_private_and_reused_while_valid(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", 1)
    for key in (pki.ca_key, pki.replica(1).key, pki.balancer.key, pki.balancer_bundle):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert isinstance(
        ec.derive_private_key(1, ec.SECP256R1()), ec.EllipticCurvePrivateKey
    )  # keys are P-256
    first = pki.replica(1).cert.read_bytes()
    assert ensure_pki(tmp_path / "pki", 2).replica(1).cert.read_bytes() == first
    assert pki.replica(2).cert.exists()


def test_certificates_close_to_expiry_are_made_again(tmp_path: Path) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=200)
    old = ensure_pki(tmp_path / "pki", 1, now=long_ago)
    old_ca = old.ca_cert.read_bytes()
    fresh = ensure_pki(tmp_path / "pki", 1)
    assert fresh.ca_cert.read_bytes() != old_ca
    _cert(fresh.replica(1).cert).verify_directly_issued_by(_cert(fresh.ca_cert))
