"""DKIM signing (RFC 6376): dkimpy for the DKIM rules, OpenSSL for the arithmetic.

`dkim.sign()` parses the PEM key and computes the RSA signature in pure Python on every call,
about 7 ms a message: a 10,000-message campaign would spend more than a minute signing. This
signer keeps dkimpy for everything that is DKIM (splitting the message, relaxed
canonicalisation, choosing and hashing the signed header fields, the tag list and its folding)
and hands only the final RSA signature to `cryptography` (OpenSSL), with the key parsed once per
campaign. The body hash is kept for the next message, so a body that is the same for every
recipient is canonicalised and hashed once. The tests check every signature with dkimpy's own
verifier.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections import Counter
from collections.abc import Collection, Sequence

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy

from mailcli.campaign import DkimConfig
from mailcli.errors import ConfigError, open_error

HEADER = b"DKIM-Signature"
# RFC 8301: verifiers must reject RSA keys under 1024 bits; 2048 is what providers ask for.
MIN_BITS = 1024


class DkimSigner:
    """Signs finished messages for one domain and selector with one RSA key."""

    def __init__(self, pem: bytes, *, domain: str, selector: str, where: str) -> None:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except TypeError:
            raise ConfigError(
                f"the DKIM key in {where} is encrypted; give it unencrypted"
            ) from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"the DKIM key in {where} cannot be read: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(
                f"the DKIM key in {where} is not an RSA key (mailcli signs with rsa-sha256)"
            )
        if key.key_size < MIN_BITS:
            raise ConfigError(
                f"the DKIM key in {where} has {key.key_size} bits; receivers reject keys under "
                f"{MIN_BITS} (RFC 8301), use 2048"
            )
        self._key = key
        self.domain = domain.encode("ascii")
        self.selector = selector.encode("ascii")
        self._policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
        self._body: bytes | None = None
        self._body_hash = b""

    @property
    def public_key_record(self) -> str:
        """The DNS TXT record to publish at SELECTOR._domainkey.DOMAIN."""
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"

    def sign(
        self,
        message: bytes,
        include: Sequence[bytes],
        *,
        oversign: Collection[bytes] = (),
        now: int | None = None,
    ) -> bytes:
        """The message with a DKIM-Signature over `include` (every instance present), the body,
        and one more of each `include` name in `oversign`, so that none can be added."""
        headers, body = dkim.rfc822_parse(message)
        counts = Counter(name.lower() for name, _ in headers)
        extra = {h.lower() for h in oversign}
        signed: list[bytes] = []
        for name in dict.fromkeys(h.lower() for h in include):
            # A verifier takes instances from the bottom up, one per entry in h=, and an entry
            # with none left stands for the null string (RFC 6376 5.4.2): the extra entry
            # matches only as long as nobody has added an instance.
            signed += [name] * (counts[name] + (name in extra))
        if not counts[b"from"] or b"from" not in signed:
            raise ConfigError("DKIM signing needs a From header")
        fields = [
            (b"v", b"1"),
            (b"a", b"rsa-sha256"),
            (b"c", b"relaxed/relaxed"),
            (b"d", self.domain),
            (b"i", b"@" + self.domain),
            (b"q", b"dns/txt"),
            (b"s", self.selector),
            (b"t", str(int(time.time()) if now is None else now).encode("ascii")),
            (b"h", b" : ".join(signed)),
            (b"bh", self._hash_body(body)),
            # A placeholder that makes b= fold onto its own line, as dkimpy does, so that
            # filling it in leaves the earlier tags' whitespace (which is signed) unchanged.
            (b"b", b"0" * 60),
        ]
        unsigned = dkim.fold(_tags(fields), namelen=len(HEADER))
        unsigned = dkim.RE_BTAG.sub(b"\\1", unsigned)
        hasher = hashlib.sha256()
        dkim.hash_headers(
            hasher,
            self._policy,
            self._policy.canonicalize_headers(headers),
            signed,
            (HEADER, b" " + unsigned),
            dict(fields),
        )
        signature = self._key.sign(hasher.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        fields[-1] = (b"b", base64.b64encode(signature))
        value: bytes = dkim.fold(_tags(fields) + b"\r\n", namelen=len(HEADER))
        return HEADER + b": " + value + message

    def _hash_body(self, body: bytes) -> bytes:
        if body != self._body:
            canonical = self._policy.canonicalize_body(body)
            self._body = body
            self._body_hash = base64.b64encode(hashlib.sha256(canonical).digest())
        return self._body_hash


def _tags(fields: list[tuple[bytes, bytes]]) -> bytes:
    return b"; ".join(name + b"=" + value for name, value in fields)


def generate_key(bits: int = 2048) -> bytes:
    """A new RSA private key for DKIM, as unencrypted PKCS#8 PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_pem(config: DkimConfig) -> tuple[bytes, str]:
    """The PEM private key, from its file, its environment variable or the keyring; and where
    it came from, for messages."""
    if config.key_env is not None:
        pem = os.environ.get(config.key_env, "").replace("\\n", "\n").encode()
        where = f"the environment variable {config.key_env}"
        if not pem:
            raise ConfigError(f"dkim.key_env: {where} is not set or empty")
    elif config.key_keyring:
        from mailcli.secrets import dkim_keyring_entry, keyring_read

        entry = dkim_keyring_entry(config.domain, config.selector)
        where = f"the keyring entry {entry!r}"
        stored = keyring_read(entry)
        if stored is None:
            raise ConfigError(
                f"dkim.key_keyring: nothing is stored under {entry!r}",
                hint=f"store it with `mailcli dkim store {config.domain} {config.selector} "
                "< key.pem`, or create one with `mailcli dkim keygen ... --keyring`",
            )
        pem = stored.encode()
    else:
        assert config.key is not None
        try:
            pem = config.key.read_bytes()
        except OSError as exc:
            raise open_error(config.key, exc, "DKIM private key") from None
        where = str(config.key)
    if b"PRIVATE KEY" not in pem:
        raise ConfigError(f"the DKIM key in {where} is not a PEM private key")
    return pem, where


def load_signer(config: DkimConfig) -> DkimSigner:
    """A signer for a campaign's or profile's `dkim:` settings, its key read and checked now."""
    pem, where = _key_pem(config)
    return DkimSigner(pem, domain=config.domain, selector=config.selector, where=where)
