"""Throwaway certificates for the TLS tests, made with the ``openssl`` command line.

A private CA signs a server certificate for ``localhost`` / 127.0.0.1 and a client
certificate; nothing is downloaded and nothing outlives the test session.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from conftest import unavailable

SERVER_NAME = "localhost"


@dataclass(frozen=True)
class Certs:
    """Paths of the CA certificate and of the server's and client's cert and key."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context

    def client_context(self, *, with_client_cert: bool = False) -> ssl.SSLContext:
        """A verifying client context that trusts the CA (hostname checked)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_client_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(directory: Path) -> Certs:
    """Create the CA and the two certificates in ``directory``."""
    if shutil.which("openssl") is None:
        unavailable("the openssl command is needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=ferroloop test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory,
    )  # fmt: skip
    for name, subject, extensions in (
        ("server", f"/CN={SERVER_NAME}", f"subjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1"),
        ("client", "/CN=ferroloop test client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl(
            "req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", subject, cwd=directory,
        )  # fmt: skip
        (directory / f"{name}.ext").write_text(extensions + "\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
            "-extfile", f"{name}.ext", cwd=directory,
        )  # fmt: skip
    return Certs(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
