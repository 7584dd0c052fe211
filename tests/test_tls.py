"""`kite serve --tls-cert/--tls-key`: HTTPS and WSS on the same port, pairing links in https."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness import BridgeProcess, IndependentClient, parse_pair_url


def make_cert(dir_: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kite test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = dir_ / "cert.pem", dir_ / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_pairing_and_ping(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    bridge = BridgeProcess(ws, tmp_path / "state", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert bridge.url.startswith("https://")
        url = bridge.pair_url()
        assert url.startswith("https://127.0.0.1:")
        secret, host_key = parse_pair_url(url)
        ctx = ssl.create_default_context(cafile=str(cert))
        client = IndependentClient.handshake(
            f"wss://127.0.0.1:{bridge.port}/kite/v1",
            static_private=IndependentClient.new_static_key(),
            host_key=host_key,
            psk=secret,
            ssl=ctx,
        )
        assert client.request("sys.ping").result["pong"] is True
        client.close()
    finally:
        bridge.stop()
