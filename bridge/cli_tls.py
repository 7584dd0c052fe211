"""`kite tls`: a local certificate authority and a server certificate for `kite serve`.

A phone on the LAN needs a *secure context* (https) for the web app: service workers, WebCrypto
and installation as an app are refused on plain http except for localhost. `kite tls` makes:

- a CA (`<state dir>/tls/kite-ca.crt`, key `kite-ca.key` 0600), created once and reused, so each
  device trusts it once. It is **name-constrained** to loopback, private/LAN addresses, this
  machine's names and local suffixes (`.local`, `.lan`, `.home.arpa`, `.internal`): even a
  stolen CA key cannot impersonate a public web site to a phone that trusts it.
- a server certificate (`server.crt`, key `server.key` 0600) for localhost, 127.0.0.1, ::1, the
  hostname and the machine's LAN IPv4 addresses, plus `--name`/`--ip` extras (remembered in
  `sans.json`). It is reissued when that list changes, when it nears expiry (30 days) or when it
  no longer matches the CA or its key; otherwise nothing is written.

Writes are atomic (temporary file + rename), keys are created 0600. The Noise channel is what
authenticates the bridge and protects the traffic; TLS only gives the browser its secure context.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import ipaddress
import json
import os
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.cli import CliError

CA_DAYS = 3650
LEAF_DAYS = 397  # within what Apple accepts for TLS server certificates
RENEW_BEFORE = dt.timedelta(days=30)
TLS_DIR = "tls"
CA_CERT, CA_KEY = "kite-ca.crt", "kite-ca.key"
LEAF_CERT, LEAF_KEY = "server.crt", "server.key"
SANS_FILE = "sans.json"

LOCAL_SUFFIXES = ("localhost", "local", "lan", "home.arpa", "internal")
PRIVATE_NETS = (
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",  # carrier-grade NAT range, used by Tailscale and similar overlays
    "169.254.0.0/16",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
)

HELP = """\
Make (once) a local certificate authority and (re)issue a server certificate for this
machine, so browsers on your LAN -- a phone in particular -- reach `kite serve` over https.
Why: a browser gives the web app's service worker, WebCrypto and "add to home screen" only
to a secure context -- https, or localhost on the same machine. The end-to-end Noise channel
protects the traffic either way; the CA is limited to local names and private addresses.

  kite tls                          CA + certificate for localhost, this host, its LAN IPs
  kite tls --name nas.lan --ip 192.168.1.20      add names/addresses (remembered)
  kite tls --json                   machine-readable paths, names, fingerprint

Then:
  kite serve --host 0.0.0.0 --tls-cert <server.crt> --tls-key <server.key>
and trust kite-ca.crt once on each device (the steps are printed). Running it again is safe:
the CA is kept, the certificate is reissued only when names/addresses change or it nears
expiry. Behind a TLS-terminating proxy or tunnel you need none of this: see docs/security.md.
"""


@dataclass
class Wanted:
    """The names a server certificate must carry."""

    dns: set[str] = field(default_factory=set)
    ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = field(default_factory=set)

    def sorted_names(self) -> list[str]:
        return sorted(self.dns) + [str(ip) for ip in sorted(self.ips, key=_ip_key)]


def _ip_key(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
    return (ip.version, int(ip))


# -- the machine's names and addresses ---------------------------------------------------------


def _interface_ipv4s() -> set[ipaddress.IPv4Address]:
    """IPv4 addresses of the up interfaces (Linux ioctl), plus the default route's source."""
    found: set[ipaddress.IPv4Address] = set()
    if sys.platform.startswith("linux"):
        siocgifaddr = 0x8915
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(
                        s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15])
                    )
                except OSError:
                    continue  # no IPv4 address on this interface
                found.add(ipaddress.IPv4Address(packed[20:24]))
    try:  # the address used for the default route; sends nothing
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            found.add(ipaddress.IPv4Address(s.getsockname()[0]))
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.add(ipaddress.IPv4Address(info[4][0]))
    except OSError:
        pass
    return {ip for ip in found if not ip.is_loopback and not ip.is_unspecified}


def default_wanted() -> Wanted:
    w = Wanted(dns={"localhost"}, ips={ipaddress.ip_address("127.0.0.1")})
    w.ips.add(ipaddress.ip_address("::1"))
    host = socket.gethostname().strip().lower()
    if host and _valid_dns(host):
        w.dns.add(host)
        if "." not in host:
            w.dns.add(host + ".local")  # mDNS name many LANs resolve
    w.ips |= _interface_ipv4s()
    return w


def _valid_dns(name: str) -> bool:
    labels = name.split(".")
    return (
        0 < len(name) <= 253
        and all(0 < len(p) <= 63 for p in labels)
        and all(c.isalnum() or c == "-" for p in labels for c in p)
        and not any(p.startswith("-") or p.endswith("-") for p in labels)
    )


# -- files -----------------------------------------------------------------------------------


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically create or replace `path` with `mode` (keys are never readable by others)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load(cert_path: Path, key_path: Path) -> tuple[Any, Any] | None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise CliError(f"cannot read {cert_path.parent}: {exc}") from None
    return cert, key


def _same_key(cert: Any, key: Any) -> bool:
    from cryptography.hazmat.primitives import serialization

    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def fingerprint(cert: Any) -> str:
    from cryptography.hazmat.primitives import hashes

    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


# -- the CA ------------------------------------------------------------------------------------


def _constraints(w: Wanted) -> Any:
    from cryptography import x509

    dns = set(LOCAL_SUFFIXES) | {n for n in w.dns if "." not in n}
    dns |= {n for n in w.dns if not n.endswith(tuple("." + s for s in LOCAL_SUFFIXES))}
    nets = [ipaddress.ip_network(n) for n in PRIVATE_NETS]
    extra_nets = [
        ipaddress.ip_network(ip)
        for ip in w.ips
        if not any(ip.version == n.version and ip in n for n in nets)
    ]
    permitted = [x509.DNSName(n) for n in sorted(dns)]
    permitted += [x509.IPAddress(n) for n in nets + extra_nets]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def _make_ca(w: Wanted) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _new_key()
    host = socket.gethostname() or "host"
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kite"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Kite local CA ({host})"[:64]),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
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
        .add_extension(ski, critical=False)
        .add_extension(_constraints(w), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _permits(ca: Any, w: Wanted) -> list[str]:
    """The wanted names the CA's name constraints would refuse (empty: all fine)."""
    from cryptography import x509

    try:
        nc = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return []
    subtrees = nc.permitted_subtrees or []
    dns = [t.value.lower().lstrip(".") for t in subtrees if isinstance(t, x509.DNSName)]
    nets = [t.value for t in subtrees if isinstance(t, x509.IPAddress)]
    refused = [n for n in w.dns if not any(n == d or n.endswith("." + d) for d in dns)]
    refused += [
        str(ip) for ip in w.ips if not any(ip.version == n.version and ip in n for n in nets)
    ]
    return sorted(refused)


# -- the server certificate --------------------------------------------------------------------


def _leaf_names(cert: Any) -> set[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {n.lower() for n in san.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def _leaf_problem(leaf: Any, key: Any, ca: Any, w: Wanted, now: dt.datetime) -> str | None:
    """Why the existing server certificate must be reissued, or None if it is fine."""
    from cryptography.exceptions import InvalidSignature

    if not _same_key(leaf, key):
        return "the certificate does not match its key"
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "it was not issued by the current CA"
    if leaf.not_valid_after_utc - now < RENEW_BEFORE:
        return f"it expires on {leaf.not_valid_after_utc:%Y-%m-%d}"
    if leaf.not_valid_before_utc > now:
        return "it is not valid yet (clock change?)"
    names = {n.lower() for n in w.sorted_names()}
    if _leaf_names(leaf) != names:
        return "the names/addresses changed"
    return None


def _make_leaf(ca: Any, ca_key: Any, w: Wanted) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=LEAF_DAYS), ca.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted(w.dns)]
    sans += [x509.IPAddress(ip) for ip in sorted(w.ips, key=_ip_key)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Kite bridge")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


# -- the command -------------------------------------------------------------------------------


def _parse_extras(names: list[str], ips: list[str]) -> Wanted:
    w = Wanted()
    for n in names:
        n = n.strip().lower().rstrip(".")
        if not _valid_dns(n):
            raise CliError(f"--name {n!r} is not a valid DNS name")
        w.dns.add(n)
    for raw in ips:
        try:
            w.ips.add(ipaddress.ip_address(raw.strip()))
        except ValueError:
            raise CliError(f"--ip {raw!r} is not an IP address") from None
    return w


def _read_sans(path: Path) -> Wanted:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Wanted()
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc} (delete it to start over)") from None
    return _parse_extras(list(data.get("names", [])), list(data.get("ips", [])))


def ensure_tls(
    state_dir: Path,
    names: list[str] | None = None,
    ips: list[str] | None = None,
    *,
    reset: bool = False,
    new_ca: bool = False,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Create or reuse the CA, (re)issue the server certificate if needed; report what it did.

    Everything is checked before anything is written, so bad input changes nothing.
    """
    from cryptography.hazmat.primitives import serialization

    now = now or dt.datetime.now(dt.UTC)
    d = state_dir / TLS_DIR
    extras_file = d / SANS_FILE
    remembered = Wanted() if reset else _read_sans(extras_file)
    given = _parse_extras(names or [], ips or [])
    extras = Wanted(remembered.dns | given.dns, remembered.ips | given.ips)
    wanted = default_wanted()

    ca_pair = None if new_ca else _load(d / CA_CERT, d / CA_KEY)
    if ca_pair is not None:
        ca, ca_key = ca_pair
        if not _same_key(ca, ca_key):
            raise CliError(f"{d / CA_CERT} does not match {d / CA_KEY}: fix it or use --new-ca")
        if ca.not_valid_after_utc - now < RENEW_BEFORE:
            raise CliError(
                f"the CA expires on {ca.not_valid_after_utc:%Y-%m-%d}: run with --new-ca "
                "and trust the new one on your devices"
            )
        # Auto-detected names the CA may not certify (a public address on this machine that
        # appeared after the CA was made) are left out; explicit extras must fit or fail.
        skipped = _permits(ca, wanted)
        wanted.dns -= set(skipped)
        wanted.ips -= {ip for ip in wanted.ips if str(ip) in skipped}
        refused = _permits(ca, extras)
        if refused:
            raise CliError(
                f"the existing CA may not certify {', '.join(refused)} (it is limited to local "
                "names and private addresses, plus the names it was made with): run with "
                "--new-ca and trust the new CA on your devices"
            )
    else:
        skipped = []
    wanted.dns |= extras.dns
    wanted.ips |= extras.ips
    leaf_pair = None if ca_pair is None else _load(d / LEAF_CERT, d / LEAF_KEY)

    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    ca_created = False
    if ca_pair is None:
        ca, ca_key = _make_ca(wanted)
        _write(d / CA_KEY, _key_pem(ca_key), 0o600)
        _write(d / CA_CERT, ca.public_bytes(serialization.Encoding.PEM), 0o644)
        ca_created = True
    reason = "a new CA" if ca_created else None
    if leaf_pair is None and reason is None:
        reason = "no server certificate yet"
    if reason is None:
        assert leaf_pair is not None
        reason = _leaf_problem(leaf_pair[0], leaf_pair[1], ca, wanted, now)
    if reason is not None:
        leaf, leaf_key = _make_leaf(ca, ca_key, wanted)
        _write(d / LEAF_KEY, _key_pem(leaf_key), 0o600)
        _write(d / LEAF_CERT, leaf.public_bytes(serialization.Encoding.PEM), 0o644)
    else:
        assert leaf_pair is not None
        leaf = leaf_pair[0]
    extras_json = {
        "names": sorted(extras.dns),
        "ips": [str(ip) for ip in sorted(extras.ips, key=_ip_key)],
    }
    if reset or given.dns or given.ips or not extras_file.exists():
        _write(extras_file, (json.dumps(extras_json, indent=1) + "\n").encode(), 0o644)
    return {
        "ca_cert": str(d / CA_CERT),
        "ca_key": str(d / CA_KEY),
        "ca_created": ca_created,
        "ca_fingerprint_sha256": fingerprint(ca),
        "ca_not_after": ca.not_valid_after_utc.isoformat(),
        "cert": str(d / LEAF_CERT),
        "key": str(d / LEAF_KEY),
        "issued": reason is not None,
        "reason": reason,
        "not_after": leaf.not_valid_after_utc.isoformat(),
        "names": sorted(_leaf_names(leaf), key=_name_key),
        "extras": extras_json,
        "skipped": skipped,
    }


def _name_key(name: str) -> tuple[int, str]:
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return (0, name)
    return (ip.version, f"{int(ip):040d}")


def serve_command(info: dict[str, Any]) -> str:
    return f"kite serve --host 0.0.0.0 --tls-cert {info['cert']} --tls-key {info['key']}"


def trust_steps(info: dict[str, Any]) -> str:
    ca, fp = info["ca_cert"], info["ca_fingerprint_sha256"]
    return f"""\
Trust the CA once on each device (it is {ca};
check that the device shows SHA-256 {fp[:23]}...):
  Copy kite-ca.crt to the device: e-mail it to yourself, AirDrop, a USB cable or a cloud drive.
  The file is public (no key in it); the key stays in the state dir.
  Android: Settings > Security & privacy > More security settings > Encryption & credentials >
    Install a certificate > CA certificate > pick kite-ca.crt (wording varies by maker).
    Chrome then trusts it; other apps may not, which does not matter here.
  iOS / iPadOS: open kite-ca.crt (Files or Mail) > "Profile Downloaded"; Settings > General >
    VPN & Device Management > install it; then Settings > General > About > Certificate
    Trust Settings > turn on full trust for "Kite local CA".
  macOS: open it in Keychain Access (System keychain) > Trust > "Always Trust".
  Windows: certutil -addstore -f Root kite-ca.crt (or double-click > Install > Trusted Root).
  Linux: sudo cp kite-ca.crt /usr/local/share/ca-certificates/ && sudo update-ca-certificates;
    Chrome/Firefox use their own store: Settings > Certificates > Authorities > Import.
Remove the CA from a device when you no longer use Kite on it."""


def cmd_tls(args: argparse.Namespace) -> int:
    from bridge.cli import _state_dir

    info = ensure_tls(
        _state_dir(args),
        args.name or [],
        args.ip or [],
        reset=args.reset,
        new_ca=args.new_ca,
    )
    info["serve"] = serve_command(info)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    ca_state = "created" if info["ca_created"] else "reused"
    leaf_state = f"issued ({info['reason']})" if info["issued"] else "up to date"
    lan = [n for n in info["names"] if n[0].isdigit() and not n.startswith("127.")]
    print(f"CA             {info['ca_cert']}  ({ca_state}, until {info['ca_not_after'][:10]})")
    print(f"server cert    {info['cert']}  ({leaf_state}, until {info['not_after'][:10]})")
    print(f"server key     {info['key']}")
    print(f"valid for      {', '.join(info['names'])}")
    print()
    print("Serve with:")
    print(f"  {info['serve']}")
    if lan:
        print(f"then open https://{lan[0]}:8765/ on the phone (`kite pair` prints the link).")
    print()
    print(trust_steps(info))
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "tls",
        parents=[common],
        help="make a local CA and a server certificate for https on the LAN",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--name",
        action="append",
        metavar="DNS",
        help="extra DNS name for the certificate (repeatable; remembered)",
    )
    p.add_argument(
        "--ip",
        action="append",
        metavar="ADDR",
        help="extra IP address for the certificate (repeatable; remembered)",
    )
    p.add_argument("--reset", action="store_true", help="forget the remembered --name/--ip extras")
    p.add_argument(
        "--new-ca",
        action="store_true",
        help="replace the CA (devices must trust the new one; the old one stops working)",
    )
    p.add_argument("--json", action="store_true", help="print paths, names and fingerprint")
    p.set_defaults(func=cmd_tls)
