"""Throwaway certificates for TLS inside the cluster: a CA, server certificates, a client one.

`splitgpt up --tls` writes them under its run directory, and the tests make
their own. Not for production: there, certificates come from the platform's
issuer (cert-manager, a mesh's CA, ...) and reach the services as files
(SPLITGPT_TLS_*; see README, "Inside the cluster"). Uses `cryptography`,
imported here only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_FOR = datetime.timedelta(days=7)


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "splitgpt"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> KeyPair:
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem, cert, key)


def make_ca(common_name: str = "splitgpt internal CA") -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert, key)


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # in order, once each
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue(ca: KeyPair, common_name: str, hosts: list[str] = (), client: bool = False) -> KeyPair:
    """A leaf certificate signed by `ca`: for a server (SAN `hosts`) or, `client=True`, a client."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if hosts:
        builder = builder.add_extension(_san(list(hosts)), critical=False)
    return _pem(builder.sign(ca.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class DevPki:
    """Paths of a throwaway CA and the certificates signed by it."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def env(self) -> dict[str, str]:
        """Every service: serve with the server pair, require client certificates
        of this CA, call the others with the client pair."""
        return {
            "SPLITGPT_TLS_CERT": str(self.server_cert),
            "SPLITGPT_TLS_KEY": str(self.server_key),
            "SPLITGPT_TLS_CLIENT_CA": str(self.ca),
            "SPLITGPT_TLS_CA": str(self.ca),
            "SPLITGPT_TLS_CLIENT_CERT": str(self.client_cert),
            "SPLITGPT_TLS_CLIENT_KEY": str(self.client_key),
        }


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_dev_pki(directory: Path, hosts: list[str]) -> DevPki:
    """A fresh CA, one server certificate for `hosts` (plus 127.0.0.1 and localhost)
    and one client certificate, written to `directory` (keys readable by the owner only).
    The CA's key is not written: nothing more can be signed with it after this run."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    server = issue(ca, "splitgpt server", [*hosts, "127.0.0.1", "localhost"])
    client = issue(ca, "splitgpt client", client=True)
    pki = DevPki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
    _write(pki.ca, ca.cert_pem)
    _write(pki.server_cert, server.cert_pem)
    _write(pki.server_key, server.key_pem, private=True)
    _write(pki.client_cert, client.cert_pem)
    _write(pki.client_key, client.key_pem, private=True)
    return pki


def main(argv: list[str] | None = None) -> None:
    """`python -m splitgpt.shells.tls DIR HOST...`: a throwaway PKI and a fresh internal
    token for compose or a test cluster (README, "Inside the cluster")."""
    import argparse
    import secrets

    p = argparse.ArgumentParser(prog="python -m splitgpt.shells.tls", description=main.__doc__.splitlines()[0])
    p.add_argument("directory", type=Path)
    p.add_argument("hosts", nargs="*", help="names the server certificate is valid for (127.0.0.1 and localhost always)")
    args = p.parse_args(argv)
    pki = write_dev_pki(args.directory, args.hosts)
    _write(args.directory / "internal-token", secrets.token_urlsafe(32).encode(), private=True)
    print(
        f"wrote {pki.ca.name}, {pki.server_cert.name}, {pki.client_cert.name}, their keys and internal-token to {args.directory}"
    )


if __name__ == "__main__":
    main()
