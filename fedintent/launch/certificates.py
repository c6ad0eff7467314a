"""Development credentials for a TLS deployment with SuperNode authentication.

A throwaway certificate authority signs the SuperLink's TLS certificate, so SuperNodes and the
``flwr`` CLI can verify they talk to the real SuperLink; each site gets an EC key pair in
OpenSSH format, whose public half the SuperLink operator registers so that only known sites
can join; the operator gets an Ed25519 release-signing key, whose public half every site pins
in ``trusted-entities.yaml`` so that it runs only app bundles the operator signed. Private
keys are created with mode 0600 and every file appears whole or not at all; existing
credentials are never overwritten. For production, see docs/DEPLOYMENT.md.
"""

import base64
import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fl_protocol.durable_files import FileExistsRefusal, create_exclusive

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "superlink.crt"
SERVER_KEY = "superlink.key"
SIGNING_KEY = "release-signing.key"
SIGNING_PUBLIC_KEY = "release-signing.pub"
TRUSTED_ENTITIES = "trusted-entities.yaml"
VALID_DAYS = 365


class CredentialsExistError(FileExistsError):
    """The output folder already holds credentials of the same name."""


@dataclass(frozen=True)
class DevCredentials:
    """Paths of the files written by :func:`write_dev_credentials`."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    signing_key: Path
    signing_public_key: Path
    trusted_entities: Path
    site_keys: dict[str, Path]
    site_public_keys: dict[str, Path]


def site_names(num_sites: int) -> list[str]:
    """``site-00``, ``site-01``, ...: the names ``data_synth.write_sites`` gives its sites."""
    return [f"site-{i:02d}" for i in range(num_sites)]


def credential_paths(out_dir: Path, sites: list[str]) -> DevCredentials:
    """Where each credential lives in ``out_dir``."""
    return DevCredentials(
        ca_cert=out_dir / CA_CERT,
        ca_key=out_dir / CA_KEY,
        server_cert=out_dir / SERVER_CERT,
        server_key=out_dir / SERVER_KEY,
        signing_key=out_dir / SIGNING_KEY,
        signing_public_key=out_dir / SIGNING_PUBLIC_KEY,
        trusted_entities=out_dir / TRUSTED_ENTITIES,
        site_keys={site: out_dir / f"{site}.key" for site in sites},
        site_public_keys={site: out_dir / f"{site}.pub" for site in sites},
    )


def write_dev_credentials(
    out_dir: Path, sites: list[str], ip_addresses: list[str], dns_names: list[str]
) -> DevCredentials:
    """Write a CA, a SuperLink certificate for the given addresses, the operator's release-signing
    key with the sites' ``trusted-entities.yaml`` for it, and one key per site.

    Raises :class:`CredentialsExistError` before writing anything if any file already exists.
    """
    if not ip_addresses and not dns_names:
        raise ValueError("the SuperLink certificate needs at least one IP address or DNS name")
    paths = credential_paths(Path(out_dir), sites)
    targets = [paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key,
               paths.signing_key, paths.signing_public_key, paths.trusted_entities,
               *paths.site_keys.values(), *paths.site_public_keys.values()]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise CredentialsExistError(f"refusing to overwrite {', '.join(existing)}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = _ca_certificate(ca_key)
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = _server_certificate(server_key, ca_key, ca_cert, ip_addresses, dns_names)
    _write_new_file(paths.ca_key, _pem_private_key(ca_key), 0o600)
    _write_new_file(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_new_file(paths.server_key, _pem_private_key(server_key), 0o600)
    _write_new_file(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM),
                    0o644)
    private, public = signing_key_pair(comment="fedintent release signing")
    _write_new_file(paths.signing_key, private, 0o600)
    _write_new_file(paths.signing_public_key, public, 0o644)
    _write_new_file(paths.trusted_entities, trusted_entities_yaml([public]), 0o644)
    for site in sites:
        private, public = site_key_pair(comment=site)
        _write_new_file(paths.site_keys[site], private, 0o600)
        _write_new_file(paths.site_public_keys[site], public, 0o644)
    return paths


def site_key_pair(comment: str) -> tuple[bytes, bytes]:
    """(private, public) OpenSSH ECDSA P-384 keys, as ``ssh-keygen -t ecdsa -b 384`` makes.

    Flower reads the private key with ``load_ssh_private_key`` and ``flwr supernode register``
    accepts only NIST EC public keys in OpenSSH format.
    """
    return _openssh_pair(ec.generate_private_key(ec.SECP384R1()), comment)


def signing_key_pair(comment: str) -> tuple[bytes, bytes]:
    """(private, public) OpenSSH Ed25519 keys, as ``ssh-keygen -t ed25519`` makes.

    Flower's SuperNode verifies app bundles only against Ed25519 keys (``--trusted-entities``).
    """
    return _openssh_pair(ed25519.Ed25519PrivateKey.generate(), comment)


def _openssh_pair(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, comment: str
) -> tuple[bytes, bytes]:
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + f" {comment}\n".encode()


def signing_key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """The key's id in ``trusted-entities.yaml``: its SHA256 fingerprint as ``ssh-keygen -lf``
    prints it, so a site can compare it with the operator by phone."""
    blob = base64.b64decode(
        public_key.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).split()[1]
    )
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def is_ca_certificate(certificate: x509.Certificate) -> bool:
    """Whether ``certificate`` says it is a CA's (basicConstraints CA:TRUE), as TLS requires of
    a certificate it trusts to issue others: what the SuperLink's ``ca.crt``, the operator's
    connection and a site's ``CA_CERT`` are each held to (a server's own certificate given for
    the CA had passed; found in review)."""
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:  # no CA's, as RFC 5280 reads it
        return False


def ca_file_problem(data: bytes, certificates: list[x509.Certificate]) -> str | None:
    """Why the PEM file ``data``, holding ``certificates``, is no CA file to trust, or None: it
    also holds a private key (the CA's would then sit where only its certificate belongs), or a
    certificate that is not a CA's. The SuperLink's ``ca.crt`` and the operator's connection
    are held to it; a site's ``CA_CERT`` needs only one CA among its certificates."""
    if b"PRIVATE KEY" in data:
        return "holds a private key; give the CA's certificate alone and keep its key elsewhere"
    if not all(map(is_ca_certificate, certificates)):
        return ("is not a CA certificate (basicConstraints CA:FALSE or missing); give the CA's, "
                "e.g. ca.crt, not the SuperLink's")
    return None


def trusted_entities_yaml(public_keys: list[bytes]) -> bytes:
    """``flower-supernode --trusted-entities`` content: key id -> ``ssh-ed25519 ...`` line."""
    lines = ["# Keys whose signature on an app bundle this site accepts (docs/SITE_GUIDE.md)."]
    for line in public_keys:
        key = serialization.load_ssh_public_key(line)
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ValueError("a trusted entity must be an Ed25519 public key")
        text = line.decode().strip()
        lines.append(f'"{signing_key_id(key)}": "{text}"')
    return ("\n".join(lines) + "\n").encode()


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedintent development CA")])
    public = key.public_key()
    return (
        _builder(name, name, public)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA384())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ip_addresses: list[str],
    dns_names: list[str],
) -> x509.Certificate:
    common_name = (dns_names or ip_addresses)[0]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    alt_names = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    alt_names += [x509.DNSName(name) for name in dns_names]
    return (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
    )


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` whole, with ``mode``; never replace an existing credential."""
    try:
        create_exclusive(path, data, mode)
    except FileExistsRefusal as err:
        raise CredentialsExistError(f"refusing to overwrite {path}") from err
