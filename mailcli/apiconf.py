"""`api:` settings: which HTTP API provider carries the messages, and how.

A leaf module (no HTTP client here): a campaign file, a profile, `Mailer(api=...)` and Flask's
`MAIL_API` all end up as one frozen `ApiConfig`, validated in one place. The token is never part of
it: it comes from the provider's usual environment variable, the keyring or `token_command`
(`mailcli.secrets`).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from mailcli.errors import ConfigError
from mailcli.yamlconf import Section


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """What the configuration needs to know of a provider (the rest is in `mailcli.providers`)."""

    title: str
    token_env: str
    base_url: str
    keys: frozenset[str]  # the provider-specific keys it takes


PROVIDERS: Mapping[str, ProviderInfo] = MappingProxyType(
    {
        "postmark": ProviderInfo(
            "Postmark",
            "POSTMARK_SERVER_TOKEN",
            "https://api.postmarkapp.com",
            frozenset(("stream", "tag", "metadata")),
        ),
        "resend": ProviderInfo(
            "Resend", "RESEND_API_KEY", "https://api.resend.com", frozenset(("tag", "metadata"))
        ),
        "sendgrid": ProviderInfo(
            "SendGrid",
            "SENDGRID_API_KEY",
            "https://api.sendgrid.com",
            frozenset(("tag", "metadata")),
        ),
        "mailgun": ProviderInfo(
            "Mailgun",
            "MAILGUN_API_KEY",
            "https://api.mailgun.net",
            frozenset(("domain", "region", "tag", "metadata")),
        ),
    }
)
MAILGUN_REGIONS = MappingProxyType(
    {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}
)
COMMON_KEYS = ("provider", "base_url", "token_command", "timeout", "batch_size")
API_KEYS = (*COMMON_KEYS, "stream", "tag", "metadata", "domain", "region")
# Keys that would put a secret into a file: refused, with the places a token may come from.
SECRET_KEYS = ("token", "api_key", "key", "password", "secret", "server_token")
_TAG_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}$"
)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """An HTTP API provider and its options; `base_url=None` is the provider's own endpoint."""

    provider: str
    base_url: str | None = None
    stream: str | None = None  # Postmark's message stream (e.g. "broadcast")
    tag: str | None = None
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    domain: str | None = None  # Mailgun's sending domain
    region: str | None = None  # Mailgun: "us" or "eu"
    token_command: str | None = None
    timeout: float | None = None
    batch_size: int | None = None  # fewer messages a call than the provider allows

    def __post_init__(self) -> None:
        # Frozen all the way down: a dict given by an application (Flask, Django) is copied.
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))
        check_api(self)

    @property
    def info(self) -> ProviderInfo:
        """The provider's fixed facts."""
        return PROVIDERS[self.provider]

    @property
    def url(self) -> str:
        """The endpoint the requests go to (no trailing slash)."""
        if self.base_url:
            return self.base_url.rstrip("/")
        if self.provider == "mailgun" and self.region:
            return MAILGUN_REGIONS[self.region]
        return self.info.base_url


def check_api(config: ApiConfig, where: str = "api") -> None:
    """Raise ConfigError (naming `where.KEY` and the provider) for settings that cannot work."""
    name = config.provider
    if name not in PROVIDERS:
        raise ConfigError(f"{where}.provider: unknown provider {name!r} (one of {_names()})")
    title = PROVIDERS[name].title
    given = {
        "stream": config.stream,
        "domain": config.domain,
        "region": config.region,
        "tag": config.tag,
        "metadata": config.metadata or None,
    }
    for key, value in given.items():
        if value is not None and key not in PROVIDERS[name].keys:
            raise ConfigError(f"{where}.{key}: {title} has no {key} (provider {name})")
    if name == "mailgun" and not config.domain:
        raise ConfigError(f"{where}.domain: Mailgun needs the sending domain, e.g. mg.example.com")
    if config.domain is not None and not _DOMAIN_RE.match(config.domain):
        raise ConfigError(f"{where}.domain: {config.domain!r} is not a domain name")
    if config.region is not None and config.region not in MAILGUN_REGIONS:
        raise ConfigError(f"{where}.region: must be one of {', '.join(MAILGUN_REGIONS)}")
    if config.base_url is not None:
        check_base_url(config.base_url, f"{where}.base_url")
    if config.timeout is not None and not (math.isfinite(config.timeout) and config.timeout > 0):
        raise ConfigError(f"{where}.timeout: must be a positive number of seconds")
    if config.batch_size is not None and config.batch_size < 1:
        raise ConfigError(f"{where}.batch_size: must be at least 1")
    if name == "resend":
        # Resend tags are name/value pairs of ASCII letters, digits, '_' and '-'.
        pairs = {"tag": config.tag or "x", **config.metadata}
        for key, value in pairs.items():
            if not (_TAG_RE.match(key) and _TAG_RE.match(value)):
                raise ConfigError(
                    f"{where}.metadata: Resend takes tag names and values of ASCII letters, "
                    f"digits, '_' and '-' only, not {key!r}: {value!r}"
                    if key != "tag"
                    else f"{where}.tag: Resend takes ASCII letters, digits, '_' and '-' only, "
                    f"not {value!r}"
                )


def check_base_url(url: str, where: str) -> None:
    """https, or http to a loopback address only (a token must not cross a network in clear)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigError(f"{where}: not a URL: {url!r} ({exc})") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigError(f"{where}: must be an https:// URL, not {url!r}")
    if parts.scheme == "http" and not _loopback(host):
        raise ConfigError(
            f"{where}: http:// is only for a loopback host (127.0.0.1, ::1, localhost); "
            "anywhere else the token would cross the network in clear: use https://"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{where}: give the endpoint only, without credentials or a query")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _names() -> str:
    return ", ".join(PROVIDERS)


def read_api(sec: Section) -> ApiConfig:
    """The `api:` mapping of a campaign file or a profile, validated with file and line."""
    for key in SECRET_KEYS:
        if key in sec.items:
            named = sec.value("provider") if "provider" in sec.items else None
            info = PROVIDERS.get(named) if isinstance(named, str) else None
            variable = info.token_env if info else "the provider's variable"
            raise sec.error(
                key,
                "an API token is never read from a file: set "
                f"{variable}, store it with `mailcli password set --api PROVIDER`, "
                "or give api.token_command",
            )
    sec.reject_unknown(API_KEYS)
    provider = sec.text("provider", required=True)
    assert provider is not None
    if provider not in PROVIDERS:
        raise sec.error("provider", f"unknown provider {provider!r} (one of {_names()})")
    metadata: dict[str, str] = {}
    meta = sec.section("metadata")
    if meta is not None:
        for key in meta.items:
            value = meta.value(key)
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise meta.error(key, "must be a string")
            metadata[str(key)] = str(value)
    timeout = sec.get("timeout", float, "a number of seconds")
    batch_size = sec.get("batch_size", int, "a whole number")
    try:
        return ApiConfig(
            provider=provider,
            base_url=sec.text("base_url"),
            stream=sec.text("stream"),
            tag=sec.text("tag"),
            metadata=MappingProxyType(metadata),
            domain=sec.text("domain"),
            region=sec.text("region"),
            token_command=sec.text("token_command"),
            timeout=timeout,
            batch_size=batch_size,
        )
    except ConfigError as exc:
        # "api.KEY: problem" -> "'<where>KEY': problem", at the line of KEY.
        key, _, problem = exc.message.partition(": ")
        raise sec.error(key.removeprefix("api."), problem) from None
