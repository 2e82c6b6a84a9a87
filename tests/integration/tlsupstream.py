"""
A TLS-only PostgreSQL upstream for the upstream-leg tests: a cluster with
``ssl = on``, a CA of its own and a pg_hba.conf whose TCP lines are all
``hostssl`` (``cert`` for the role ``certuser``, trust for the others).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pgserver import PostgresServer

from pgtls.tls import certs

__all__ = ["CERT_USER", "SERVER_NAMES", "UpstreamPki", "tls_only_server"]

#: The role that the upstream admits by client certificate only.
CERT_USER = "certuser"
#: The names in the upstream's server certificate.
SERVER_NAMES = ("db.test", "localhost", "127.0.0.1")

TLS_ONLY_HBA = (
    "local all all trust",
    f"hostssl all {CERT_USER} 127.0.0.1/32 cert",
    "hostssl all all 127.0.0.1/32 trust",
)


@dataclass
class UpstreamPki:
    """The upstream's CA and files: its server certificate, a CRL, client certificates."""

    root: Path
    ca: certs.Issued = field(default_factory=lambda: certs.make_ca("upstream test CA"))
    other_ca: certs.Issued = field(default_factory=lambda: certs.make_ca("unrelated CA"))

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.server = certs.issue_server_cert(self.ca, list(SERVER_NAMES))
        self.ca_file = self._pem("ca.crt", self.ca.cert)
        self.other_ca_file = self._pem("other-ca.crt", self.other_ca.cert)
        self.server_cert = self._pem("server.crt", self.server.cert)
        self.server_key = self.root / "server.key"
        certs.write_key(str(self.server_key), self.server.key)
        self.crl_empty = self._pem("empty.crl", certs.make_crl(self.ca))
        self.crl_revoking_server = self._pem(
            "revoked.crl", certs.make_crl(self.ca, [self.server.cert])
        )

    def _pem(self, name: str, *items: x509.Certificate | x509.CertificateRevocationList) -> Path:
        path = self.root / name
        certs.write_pem(str(path), *items)
        return path

    def client(self, user: str, name: str | None = None) -> tuple[Path, Path]:
        """A client certificate for ``user``: (cert file, key file of mode 0600)."""
        issued = certs.issue_client_cert(self.ca, user)
        base = self.root / (name or user)
        certs.write_pem(f"{base}.crt", issued.cert)
        certs.write_key(f"{base}.key", issued.key)
        return Path(f"{base}.crt"), Path(f"{base}.key")

    def expired_server(self, directory: Path) -> tuple[Path, Path]:
        """A server certificate for SERVER_NAMES, signed by the CA, that expired yesterday."""
        directory.mkdir(parents=True, exist_ok=True)
        fresh = certs.issue_server_cert(self.ca, list(SERVER_NAMES))
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(fresh.cert.subject)
            .issuer_name(self.ca.cert.subject)
            .public_key(fresh.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30))
            .not_valid_after(now - datetime.timedelta(days=1))
        )
        for extension in fresh.cert.extensions:
            if not isinstance(extension.value, x509.SubjectKeyIdentifier):
                builder = builder.add_extension(extension.value, extension.critical)
        cert = builder.sign(self.ca.key, hashes.SHA256())
        cert_file, key_file = directory / "server.crt", directory / "server.key"
        certs.write_pem(str(cert_file), cert)
        certs.write_key(str(key_file), fresh.key)
        return cert_file, key_file


def tls_only_server(pki: UpstreamPki) -> PostgresServer:
    """A started PostgreSQL 15 with ssl = on and hostssl-only TCP rules (caller closes it)."""
    server = PostgresServer(
        tcp=True,
        ssl_cert_file=pki.server_cert,
        ssl_key_file=pki.server_key,
        ssl_ca_file=pki.ca_file,
        hba=TLS_ONLY_HBA,
        settings={"log_connections": "on"},
    )
    try:
        server.start()
        server.psql(f"CREATE ROLE {CERT_USER} LOGIN")
    except BaseException:
        server.close()
        raise
    return server
