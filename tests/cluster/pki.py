"""Certificates and keys for a throw-away control plane (the `cryptography` package).

Everything here is for loopback test clusters: short-lived, no passphrases, PEM
files. CAs and the service-account key are 2048-bit RSA; leaf certificates are
ECDSA P-256, as kube-webhook-certgen (which HAMi's chart uses) makes them, so a
TLS handshake costs the server a cheap ECDSA signature rather than an RSA one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=7)


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_leaf_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def public_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _key_usage(ca: bool) -> x509.KeyUsage:
    """A CA (RSA) signs certificates and may encipher keys; a leaf (ECDSA) only signs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, common_name: str = "hami-test-ca") -> CertificateAuthority:
        key = new_key()
        now = dt.datetime.now(dt.UTC)
        name = _name(common_name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    def issue(
        self,
        common_name: str,
        *,
        organizations: tuple[str, ...] = (),
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
    ) -> tuple[PrivateKey, x509.Certificate]:
        """Issues a leaf certificate; `server` and `client` choose the extended key usages."""
        key = new_leaf_key()
        now = dt.datetime.now(dt.UTC)
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organizations))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


def write_pair(directory: Path, stem: str, key: PrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    """Writes `<stem>.crt` and `<stem>.key` (mode 0600) and returns their paths."""
    crt_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    crt_path.write_bytes(cert_pem(cert))
    key_path.write_bytes(key_pem(key))
    key_path.chmod(0o600)
    return crt_path, key_path


@dataclass(frozen=True)
class ServingCert:
    """A CA plus one server certificate, for test HTTPS servers (webhooks, extenders)."""

    ca_pem: bytes
    cert_file: Path
    key_file: Path


def serving_cert(directory: Path, host: str = "127.0.0.1", stem: str = "server") -> ServingCert:
    """Creates a fresh CA and a server certificate for `host` (an IP or DNS name) in `directory`.

    Use `ca_pem` as a webhook's caBundle, and `cert_file`/`key_file` for
    `ssl.SSLContext.load_cert_chain`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create(f"{stem}-ca")
    try:
        ipaddress.ip_address(host)
        key, cert = ca.issue(host, ip_addresses=(host,), server=True)
    except ValueError:
        key, cert = ca.issue(host, dns_names=(host,), server=True)
    crt_path, key_path = write_pair(directory, stem, key, cert)
    (directory / f"{stem}-ca.crt").write_bytes(ca.cert_pem)
    return ServingCert(ca.cert_pem, crt_path, key_path)
