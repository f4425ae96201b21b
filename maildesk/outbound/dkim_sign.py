"""DKIM signing of outbound mail (RFC 6376, RFC 8463), done by the sender just before the transport.

Keys are read and checked once (at start, and by ``maildesk check``); a
problem is a :class:`ConfigError` naming the file, the key and the reason,
never the key itself. A mail is signed by every key of the most specific
configured domain its From aligns with (the domain or a parent of it), so a
domain may be signed with RSA and Ed25519 side by side; a mail from any other
domain goes out unsigned, with a log line.

The signature is computed on the bytes handed to the transport and never
stored: the outbox blob (which several rows may share) stays as composed, and
a retry after a key rotation is signed with the key configured then.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parseaddr

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from maildesk.config import ConfigError, DkimKeySettings, Settings, refuse_world_readable

log = logging.getLogger("maildesk.outbound")

MIN_RSA_BITS = 1024
CANONICALIZATION = (b"relaxed", b"relaxed")


@dataclass(frozen=True)
class SigningKey:
    """One configured key, read and checked; ``private`` is never shown in a repr or log."""

    domain: str
    selector: str
    algorithm: str  # "rsa" or "ed25519"
    headers: tuple[str, ...]  # to sign, oversigned ones already repeated
    public_key: str  # base64, as published in p=
    private: bytes = field(repr=False)  # what dkimpy takes: PEM (RSA) or the base64 seed

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def txt_value(self) -> str:
        """The TXT record to publish at :attr:`dns_name`."""
        return f"v=DKIM1; k={self.algorithm}; p={self.public_key}"

    def zone_line(self) -> str:
        """The record as a zone-file line, the value split into strings of at most 255 octets."""
        value = self.txt_value
        chunks = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
        return f"{self.dns_name}. IN TXT ( {chunks} )"

    def aligned(self, from_domain: str) -> bool:
        """Whether this key may sign mail From ``from_domain`` (relaxed DMARC alignment)."""
        return from_domain == self.domain or from_domain.endswith("." + self.domain)

    def signature(self, raw: bytes, linesep: bytes) -> bytes:
        """The DKIM-Signature header line for ``raw``, relaxed/relaxed."""
        return dkim.sign(
            raw,
            self.selector.encode("ascii"),
            self.domain.encode("ascii"),
            self.private,
            canonicalize=CANONICALIZATION,
            signature_algorithm=b"ed25519-sha256" if self.algorithm == "ed25519" else b"rsa-sha256",
            include_headers=[h.encode("ascii") for h in self.headers],
            linesep=linesep,
        )


def load_keys(settings: Settings) -> list[SigningKey]:
    """Read and check every ``[[outbound.dkim]]`` key; ConfigError naming the first bad one."""
    keys = []
    for index, config in enumerate(settings.outbound.dkim):
        key = f"outbound.dkim.{index}.private_key_file"
        refuse_world_readable(settings.source, key, config.private_key_file)
        try:
            keys.append(_load_key(config))
        except ValueError as exc:
            raise ConfigError(settings.source, key, str(exc)) from None
    return keys


def _load_key(config: DkimKeySettings) -> SigningKey:
    path = config.private_key_file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if config.algorithm == "ed25519":
        private, public = _ed25519_key(data, str(path))
    else:
        private, public = _rsa_key(data, str(path))
    oversigned = tuple(h.lower() for h in config.oversign)
    return SigningKey(
        domain=config.domain,
        selector=config.selector,
        algorithm=config.algorithm,
        headers=tuple(h.lower() for h in config.headers) + oversigned,
        public_key=public,
        private=private,
    )


def _private_key(data: bytes, path: str, algorithm: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # a passphrase: the daemon could not start unattended
        raise ValueError(
            f"{path} is an encrypted private key; give it unencrypted (mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        pass
    if algorithm == "ed25519":  # dkimpy's `dknewkey --ktype ed25519` writes the bare base64 seed
        try:
            return ed25519.Ed25519PrivateKey.from_private_bytes(
                base64.b64decode(data.strip(), validate=True)
            )
        except (binascii.Error, ValueError):
            pass
    example = (
        "`openssl genpkey -algorithm ed25519`"
        if algorithm == "ed25519"
        else "`openssl genrsa 2048`"
    )
    raise ValueError(f"{path} is not a private key in PEM, e.g. from {example}")


def _rsa_key(data: bytes, path: str) -> tuple[bytes, str]:
    """The PEM dkimpy signs with and the public key for DNS, from an RSA private key file."""
    key = _private_key(data, path, "rsa")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f'{path} is not an RSA private key (algorithm = "rsa")')
    if key.key_size < MIN_RSA_BITS:
        raise ValueError(
            f"{path} holds an RSA key of {key.key_size} bits; receivers ignore signatures by "
            f"keys under {MIN_RSA_BITS} bits (use 2048)"
        )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1, which dkimpy reads
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(public).decode("ascii")


def _ed25519_key(data: bytes, path: str) -> tuple[bytes, str]:
    """The base64 seed dkimpy signs with and the public key for DNS.

    The file is PKCS#8 PEM (``openssl genpkey -algorithm ed25519``) or the
    base64 seed dkimpy's ``dknewkey --ktype ed25519`` writes.
    """
    key = _private_key(data, path, "ed25519")
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f'{path} is not an Ed25519 private key (algorithm = "ed25519")')
    raw = serialization.Encoding.Raw
    seed = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return base64.b64encode(seed), base64.b64encode(public).decode("ascii")


def from_domain(raw: bytes) -> str:
    """The domain of the From address in ``raw`` (lower case), or "" when there is none."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw)
    _name, address = parseaddr(str(headers.get("From", "")))
    return address.rpartition("@")[2].lower().rstrip(".")


class DkimSigner:
    """Signs mail with the configured keys just before it goes to the transport."""

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        self.keys = list(keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner | None:
        """The signer for the configured keys; None when none are configured."""
        return cls(load_keys(settings)) if settings.outbound.dkim else None

    def keys_for(self, domain: str) -> list[SigningKey]:
        """The keys of the most specific configured domain ``domain`` aligns with."""
        aligned = [key for key in self.keys if key.aligned(domain)]
        if not aligned:
            return []
        closest = max(len(key.domain) for key in aligned)
        return [key for key in aligned if len(key.domain) == closest]

    def sign(self, raw: bytes, context: str) -> bytes:
        """``raw`` with a DKIM-Signature per aligned key on top; ``raw`` itself when none aligns.

        ``context`` names the mail in the log line (``outbox=12 ticket=3``).
        """
        domain = from_domain(raw)
        keys = self.keys_for(domain)
        if not keys:
            log.info(
                "%s: From domain %r has no DKIM key configured: sent unsigned", context, domain
            )
            return raw
        linesep = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"  # the message's own line ends
        try:
            signatures = [key.signature(raw, linesep) for key in keys]
        except dkim.DKIMException:  # a mail dkimpy cannot read: late, unsigned, beats never
            log.exception("%s: cannot DKIM-sign for %s: sent unsigned", context, domain)
            return raw
        return b"".join(signatures) + raw
