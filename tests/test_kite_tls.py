"""`kite tls`: a real CA and server certificate, used by a real `kite serve` and trusted by a
client that trusts nothing else; idempotence, reissue on change and near expiry, bad input that
changes nothing, and the CA's name constraints enforced by OpenSSL."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.cli_tls import _valid_dns, ensure_tls
from tests.harness import BridgeProcess, IndependentClient, kite, parse_pair_url


def _tls(state: Path, *args: str, check: bool = True) -> dict:
    r = kite("tls", "--json", *args, state_dir=state, check=check)
    return json.loads(r.stdout) if r.returncode == 0 else {"rc": r.returncode, "err": r.stderr}


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_issue_modes_and_names(tmp_path: Path) -> None:
    info = _tls(tmp_path)
    assert info["ca_created"] and info["issued"]
    for key in (info["ca_key"], info["key"]):
        assert stat.S_IMODE(Path(key).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(info["ca_key"]).parent.stat().st_mode) == 0o700
    names = set(info["names"])
    assert {"localhost", "127.0.0.1", "::1"} <= names
    host = socket.gethostname().lower()
    if _valid_dns(host):  # a hostname that is not a DNS name (e.g. with "_") is left out
        assert host in names
    leaf = x509.load_pem_x509_certificate(Path(info["cert"]).read_bytes())
    ca = x509.load_pem_x509_certificate(Path(info["ca_cert"]).read_bytes())
    leaf.verify_directly_issued_by(ca)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=398)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "kite serve" in info["serve"] and info["cert"] in info["serve"]


def test_idempotent_then_reissue_on_new_name(tmp_path: Path) -> None:
    first = _tls(tmp_path)
    d = Path(first["cert"]).parent
    before = _snapshot(d)
    again = _tls(tmp_path)
    assert not again["ca_created"] and not again["issued"]
    assert _snapshot(d) == before  # nothing rewritten
    more = _tls(tmp_path, "--name", "kite-box.lan", "--ip", "192.168.7.9")
    assert more["issued"] and more["reason"] == "the names/addresses changed"
    assert {"kite-box.lan", "192.168.7.9"} <= set(more["names"])
    assert more["ca_fingerprint_sha256"] == first["ca_fingerprint_sha256"]
    assert (d / "kite-ca.key").read_bytes() == before["kite-ca.key"]
    # the extras are remembered: a plain run keeps them and writes nothing
    after = _snapshot(d)
    plain = _tls(tmp_path)
    assert not plain["issued"] and "kite-box.lan" in plain["names"]
    assert _snapshot(d) == after
    reset = _tls(tmp_path, "--reset")
    assert reset["issued"] and "kite-box.lan" not in reset["names"]


def test_bad_input_changes_nothing(tmp_path: Path) -> None:
    _tls(tmp_path)
    d = tmp_path / "tls"
    before = _snapshot(d)
    for args in (("--name", "not a name"), ("--ip", "300.1.1.1"), ("--name", "bank.example")):
        r = _tls(tmp_path, *args, check=False)
        assert r.get("rc") == 1, args
        assert "kite:" in r["err"] and "Traceback" not in r["err"]
        assert _snapshot(d) == before, args
    assert "--new-ca" in _tls(tmp_path, "--name", "bank.example", check=False)["err"]


def test_reissued_when_near_expiry(tmp_path: Path) -> None:
    first = ensure_tls(tmp_path)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=380)
    second = ensure_tls(tmp_path, now=later)
    assert second["issued"] and "expires" in second["reason"]
    assert second["ca_fingerprint_sha256"] == first["ca_fingerprint_sha256"]
    assert not ensure_tls(tmp_path)["issued"]


def test_help_teaches() -> None:
    r = kite("tls", "--help", state_dir=Path("/nonexistent-unused"))
    for words in ("--tls-cert", "--name", "--ip", "--json", "secure context", "kite serve"):
        assert words in r.stdout, words


def _client_ctx(ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts nothing until told
    ctx.load_verify_locations(cafile=ca)
    return ctx


def test_real_bridge_with_the_issued_cert(tmp_path: Path) -> None:
    info = _tls(tmp_path / "state")
    ws = tmp_path / "ws"
    ws.mkdir()
    bridge = BridgeProcess(
        ws, tmp_path / "state", "--tls-cert", info["cert"], "--tls-key", info["key"]
    )
    try:
        url = bridge.pair_url()
        assert url.startswith("https://127.0.0.1:")
        secret, host_key = parse_pair_url(url)
        client = IndependentClient.handshake(
            f"wss://127.0.0.1:{bridge.port}/kite/v1",
            static_private=IndependentClient.new_static_key(),
            host_key=host_key,
            psk=secret,
            ssl=_client_ctx(info["ca_cert"]),
        )
        assert client.request("sys.ping").result["pong"] is True
        client.close()
        # the certificate also verifies for "localhost" (hostname check on)
        ctx = _client_ctx(info["ca_cert"])
        with (
            socket.create_connection(("127.0.0.1", bridge.port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            assert s.version() is not None
        # a client that does not trust the Kite CA is refused
        with (
            socket.create_connection(("127.0.0.1", bridge.port), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        bridge.stop()


def test_ca_name_constraints_refuse_public_names(tmp_path: Path) -> None:
    """A certificate for a public name signed with the CA key (as a thief would) is rejected."""
    info = ensure_tls(tmp_path)
    d = Path(info["cert"]).parent
    ca = x509.load_pem_x509_certificate((d / "kite-ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((d / "kite-ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("bank.example")]), False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_path, key_path = tmp_path / "forged.crt", tmp_path / "forged.key"
    cert_path.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_path, key_path)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            server_ctx.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            pass
        finally:
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"),
        ):
            _client_ctx(info["ca_cert"]).wrap_socket(raw, server_hostname="bank.example")
    finally:
        t.join(10)
        listener.close()
