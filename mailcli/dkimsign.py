"""DKIM signing (RFC 6376, RFC 8463): dkimpy for the DKIM rules, OpenSSL for the arithmetic.

`dkim.sign()` parses the PEM key and computes the RSA signature in pure Python on every call,
about 7 ms a message: a 10,000-message campaign would spend more than a minute signing. This
signer keeps dkimpy for everything that is DKIM (splitting the message, relaxed
canonicalisation, choosing and hashing the signed header fields, the tag list and its folding)
and hands only the final signature to `cryptography` (OpenSSL), with the key parsed once per
campaign. The body hash is kept for the next message, so a body that is the same for every
recipient is canonicalised and hashed once. The tests check every signature with dkimpy's own
verifier.

A key is RSA (rsa-sha256) or Ed25519 (ed25519-sha256, RFC 8463), told apart by the key itself.
With several keys (`dkim:` as a list) a message carries one DKIM-Signature per key, the RSA ones
on top: RFC 8463 (section 6) lets a signer add an Ed25519 signature beside an RSA one, under a
selector of its own, and a verifier that reads only the first signature (dkimpy's `dkim.verify()`
checks the topmost one, and fails an Ed25519 one without PyNaCl) still finds the one every
receiver can check.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
from collections import Counter
from collections.abc import Collection, Sequence

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy

from mailcli.campaign import DkimConfig
from mailcli.errors import ConfigError, open_error

HEADER = b"DKIM-Signature"
# RFC 8301: verifiers must reject RSA keys under 1024 bits; 2048 is what providers ask for.
MIN_BITS = 1024
KEY_TYPES = ("rsa", "ed25519")
ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}


class DkimKey:
    """One private key, RSA or Ed25519 (told apart by the key), for one domain and selector."""

    def __init__(self, data: bytes, *, domain: str, selector: str, where: str) -> None:
        self._key = _private_key(data, where)
        #: "rsa" or "ed25519" (the k= of its DNS record)
        self.type = "rsa" if isinstance(self._key, rsa.RSAPrivateKey) else "ed25519"
        self.algorithm = ALGORITHMS[self.type]
        self.domain = domain.encode("ascii")
        self.selector = selector.encode("ascii")

    @property
    def public_key_record(self) -> str:
        """The DNS TXT record to publish at SELECTOR._domainkey.DOMAIN."""
        if isinstance(self._key, rsa.RSAPrivateKey):
            public = self._key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        else:
            # RFC 8463 4.2: the 32 bytes of the public key, not wrapped in ASN.1 as RSA's are.
            public = self._key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        return f"v=DKIM1; k={self.type}; p={base64.b64encode(public).decode('ascii')}"

    def signature(self, digest: bytes) -> bytes:
        """The signature (b=) of `digest`, the SHA-256 of the signed header data."""
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        # RFC 8463 3: PureEdDSA over the 32-byte hash (not over the header data), as dkimpy's
        # signer and verifier do.
        return self._key.sign(digest)


def _private_key(data: bytes, where: str) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """An RSA or Ed25519 private key from PEM (PKCS#8, or PKCS#1 for RSA), or from the base64
    of the 32-byte Ed25519 seed that dkimpy's `dknewkey --ktype ed25519` writes."""
    if b"PRIVATE KEY" not in data:
        seed = _dknewkey_seed(data)
        if seed is None:
            raise ConfigError(
                f"the DKIM key in {where} is not a PEM private key (nor the base64 Ed25519 "
                "key that `dknewkey --ktype ed25519` writes)"
            )
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"the DKIM key in {where} is encrypted; give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"the DKIM key in {where} cannot be read: {exc}") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(
            f"the DKIM key in {where} is neither an RSA nor an Ed25519 key (mailcli signs with "
            "rsa-sha256 and ed25519-sha256)"
        )
    if key.key_size < MIN_BITS:
        raise ConfigError(
            f"the DKIM key in {where} has {key.key_size} bits; receivers reject keys under "
            f"{MIN_BITS} (RFC 8301), use 2048"
        )
    return key


def _dknewkey_seed(data: bytes) -> bytes | None:
    """The 32-byte seed of a key in dkimpy's Ed25519 format (one line of base64), else None."""
    text = data.strip()
    if not text or len(text.split()) != 1:
        return None
    try:
        seed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return seed if len(seed) == 32 else None


class DkimSigner:
    """Signs finished messages: one DKIM-Signature for each of its keys (RSA, Ed25519)."""

    def __init__(self, pem: bytes, *, domain: str, selector: str, where: str) -> None:
        self._start([DkimKey(pem, domain=domain, selector=selector, where=where)])

    @classmethod
    def for_keys(cls, keys: Sequence[DkimKey]) -> DkimSigner:
        """A signer adding one signature per key, the RSA ones above the Ed25519 ones."""
        if not keys:
            raise ValueError("a DKIM signer needs at least one key")
        signer = cls.__new__(cls)
        signer._start(keys)
        return signer

    def _start(self, keys: Sequence[DkimKey]) -> None:
        # Sorted RSA first (stably, so two keys of one type keep their order): the first
        # signature in the header is the one an RSA-only verifier can check.
        self.keys: tuple[DkimKey, ...] = tuple(sorted(keys, key=lambda k: k.type != "rsa"))
        self._policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
        self._body: bytes | None = None
        self._body_hash = b""

    @property
    def public_key_record(self) -> str:
        """The DNS TXT record of the (first) key, to publish at SELECTOR._domainkey.DOMAIN."""
        return self.keys[0].public_key_record

    def sign(
        self,
        message: bytes,
        include: Sequence[bytes],
        *,
        oversign: Collection[bytes] = (),
        now: int | None = None,
    ) -> bytes:
        """The message with a DKIM-Signature per key over `include` (every instance present),
        the body, and one more of each `include` name in `oversign`, so that none can be added."""
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
        if b"dkim-signature" in signed:
            # Each signature is computed over the message as given, so none may cover another.
            raise ValueError("a DKIM signature cannot cover DKIM-Signature fields")
        body_hash = self._hash_body(body)
        timestamp = str(int(time.time()) if now is None else now).encode("ascii")
        canonical = self._policy.canonicalize_headers(headers)
        fields = [self._field(key, canonical, signed, body_hash, timestamp) for key in self.keys]
        return b"".join(fields) + message

    def _field(
        self,
        key: DkimKey,
        headers: list[tuple[bytes, bytes]],
        signed: list[bytes],
        body_hash: bytes,
        timestamp: bytes,
    ) -> bytes:
        """One DKIM-Signature field (name, value and CRLF) of `key`."""
        # The tags and their order are dkimpy's, for RSA and Ed25519 alike (only a= differs).
        fields = [
            (b"v", b"1"),
            (b"a", key.algorithm),
            (b"c", b"relaxed/relaxed"),
            (b"d", key.domain),
            (b"i", b"@" + key.domain),
            (b"q", b"dns/txt"),
            (b"s", key.selector),
            (b"t", timestamp),
            (b"h", b" : ".join(signed)),
            (b"bh", body_hash),
            # A placeholder that makes b= fold onto its own line, as dkimpy does, so that
            # filling it in leaves the earlier tags' whitespace (which is signed) unchanged.
            (b"b", b"0" * 60),
        ]
        unsigned = dkim.fold(_tags(fields), namelen=len(HEADER))
        unsigned = dkim.RE_BTAG.sub(b"\\1", unsigned)
        hasher = hashlib.sha256()
        dkim.hash_headers(
            hasher, self._policy, headers, signed, (HEADER, b" " + unsigned), dict(fields)
        )
        fields[-1] = (b"b", base64.b64encode(key.signature(hasher.digest())))
        value: bytes = dkim.fold(_tags(fields) + b"\r\n", namelen=len(HEADER))
        return HEADER + b": " + value

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


def generate_ed25519_key() -> bytes:
    """A new Ed25519 private key for DKIM (RFC 8463), as unencrypted PKCS#8 PEM."""
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_data(config: DkimConfig) -> tuple[bytes, str]:
    """The private key, from its file, its environment variable or the keyring; and where it
    came from, for messages."""
    if config.key_env is not None:
        data = os.environ.get(config.key_env, "").replace("\\n", "\n").encode()
        where = f"the environment variable {config.key_env}"
        if not data:
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
        data = stored.encode()
    else:
        assert config.key is not None
        try:
            data = config.key.read_bytes()
        except OSError as exc:
            raise open_error(config.key, exc, "DKIM private key") from None
        where = str(config.key)
    return data, where


def load_key(config: DkimConfig) -> DkimKey:
    """The key of one `dkim:` entry, read and checked now."""
    data, where = _key_data(config)
    return DkimKey(data, domain=config.domain, selector=config.selector, where=where)


def load_signer(config: DkimConfig | Sequence[DkimConfig]) -> DkimSigner:
    """A signer for a campaign's or profile's `dkim:` settings (one key or several), every key
    read and checked now."""
    configs = (config,) if isinstance(config, DkimConfig) else config
    return DkimSigner.for_keys([load_key(c) for c in configs])
