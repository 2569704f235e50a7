"""Campaign files: YAML in, frozen and validated `Campaign` objects out.

This is the only place that looks at the YAML. Every problem is a `ConfigError` (exit 78) naming the
file and line; everything downstream trusts the objects it gets.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml

from mailcli.addresses import AddressError, parse_mailbox
from mailcli.apiconf import ApiConfig, read_api
from mailcli.errors import ConfigError, InputFileError
from mailcli.sequence import (
    STEP_NAME_RE,
    Step,
    Window,
    load_zone,
    parse_after,
    parse_window,
)
from mailcli.yamlconf import Section, describe, load_mapping

T = TypeVar("T")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
HEADER_NAME_RE = re.compile(r"^[!-9;-~]+$")  # RFC 5322 field-name: printable ASCII except ':'
# Headers mailcli writes itself; setting them through `headers:` would make them appear twice.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Reply-To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "List-Id",
        "DKIM-Signature",
        "Sender",
        "Return-Path",
    )
)
SECURITY_MODES = ("starttls", "tls", "none")
_RATE_RE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*"
    r"(s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours)\s*$"
)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` messages in any window of `per_s` seconds."""

    count: float
    per_s: float

    @property
    def interval_s(self) -> float:
        """Seconds between two messages when sending evenly at this rate."""
        return self.per_s / self.count

    def __str__(self) -> str:
        count = _number(self.count)
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.per_s)
        return f"{count}/{unit}" if unit else f"{count}/{_number(self.per_s)}s"


def _number(value: float) -> str:
    """A float as text that parses back exactly, without exponent notation."""
    return str(int(value)) if value.is_integer() else repr(value)


@dataclass(frozen=True, slots=True)
class Retry:
    """How often a 4xx reply is retried within one run, and the first backoff delay."""

    attempts: int = 3
    delay_s: float = 30.0


@dataclass(frozen=True, slots=True)
class RecipientsSource:
    """Where the recipient list lives and how to read it."""

    path: Path
    email_column: str = "email"
    name_column: str | None = None
    encoding: str = "utf-8"
    delimiter: str = ","


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """SMTP settings from one source (campaign file or command line); None where not given."""

    profile: str | None = None
    host: str | None = None
    port: int | None = None
    security: str | None = None
    username: str | None = None
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class DkimConfig:
    """One DKIM signing key and where it is published (RFC 6376; RSA or Ed25519, RFC 8463)."""

    domain: str
    selector: str
    key: Path | None = None  # a PEM file ...
    key_env: str | None = None  # ... or an environment variable holding the PEM text ...
    key_keyring: bool = False  # ... or the keyring entry `dkim:SELECTOR._domainkey.DOMAIN`


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file to attach: a fixed path, or a Jinja template rendered per recipient."""

    source: str
    path: Path | None  # resolved now when the path is static, None when templated
    line: int


@dataclass(frozen=True)
class Campaign:
    """A loaded, validated campaign file."""

    path: Path
    name: str
    sender: str | None
    subject: str
    recipients: RecipientsSource
    state_path: Path
    reply_to: str | None = None
    # `state: postgresql://...`: the progress lives in PostgreSQL, shared by every host that
    # runs the campaign (None: the SQLite file at state_path).
    state_url: str | None = None
    connections: int | None = None  # `connections: N` (None: the profile's, else 1)
    text: Path | None = None
    html: Path | None = None
    markdown: Path | None = None
    vars: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    attachments: tuple[Attachment, ...] = ()
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    unsubscribe: str | None = None
    unsubscribe_mailto: str | None = None
    # `unsubscribe: {endpoint: URL, secret_env: VAR}`: mailcli's own one-click endpoint, each
    # message with its own signed URL (see mailcli.unsubscribe).
    unsubscribe_endpoint: str | None = None
    unsubscribe_secret_env: str | None = None
    # `suppression:` a SQLite path or a PostgreSQL URL; False: no list (None: the default one).
    suppression: str | bool | None = None
    list_id: str | None = None
    inline_images: Mapping[str, Path] = field(default_factory=lambda: MappingProxyType({}))
    # `dkim:` one key, or a list (one RSA and one Ed25519): a DKIM-Signature for each.
    dkim_keys: tuple[DkimConfig, ...] = ()
    smtp: SmtpConfig = SmtpConfig()
    api: ApiConfig | None = None  # an HTTP API provider instead of SMTP
    rate: Rate | None = None
    retry: Retry = Retry()
    inline_css: bool = False
    # A sequence (`steps:`): several messages per recipient, each at its own time (see
    # mailcli.sequence). `start` and `timezone` are templates rendered per row (a zone without
    # Jinja is one zone for all, checked when the file is read).
    steps: tuple[Step, ...] = ()
    start: str | None = None
    timezone: str | None = None
    window: Window | None = None

    @property
    def is_sequence(self) -> bool:
        """The campaign sends a sequence of steps rather than one message."""
        return bool(self.steps)

    def step(self, name: str) -> Step:
        """A step by its name (KeyError)."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    @property
    def folder(self) -> Path:
        """The folder holding the campaign file; every relative path starts here."""
        return self.path.parent

    @property
    def dkim(self) -> DkimConfig | None:
        """The first (often the only) DKIM key, None without `dkim:`; sign with `dkim_keys`."""
        return self.dkim_keys[0] if self.dkim_keys else None


DEFAULT_RETRY = Retry()


def parse_rate(text: str) -> Rate:
    """Parse `10/s`, `600/min`, `5000/h` (or `5/10s`) into a `Rate`; raise ValueError."""
    m = _RATE_RE.match(text)
    if not m:
        raise ValueError(f"invalid rate {text!r}: expected e.g. '10/s', '600/min' or '5000/h'")
    count = float(m.group(1))
    per = float(m.group(2)) if m.group(2) else 1.0
    unit = m.group(3)[0]
    seconds = per * {"s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    if not (math.isfinite(count) and math.isfinite(seconds)) or count <= 0 or seconds <= 0:
        raise ValueError(f"invalid rate {text!r}: count and period must be positive numbers")
    return Rate(count=count, per_s=seconds)


def parse_duration(value: object) -> float:
    """Parse `30s`, `2m`, `1h`, `500ms` or a bare number of seconds; raise ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION_RE.match(str(value))
        if not m:
            raise ValueError(f"invalid duration {value!r}: expected e.g. '30s', '2m' or '1h'")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2) or "s"]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must be a finite, non-negative time")
    return seconds


def is_template(text: str) -> bool:
    """True when a string holds Jinja syntax and must be rendered per recipient."""
    return "{{" in text or "{%" in text or "{#" in text


TOP_KEYS = (
    "name",
    "from",
    "reply_to",
    "subject",
    "text",
    "html",
    "markdown",
    "recipients",
    "vars",
    "attachments",
    "headers",
    "unsubscribe",
    "list_id",
    "inline_images",
    "inline_css",
    "dkim",
    "smtp",
    "api",
    "rate",
    "retry",
    "state",
    "connections",
    "suppression",
    "steps",
    "start",
    "timezone",
    "window",
)
# What a step of `steps:` may set (the message keys; the rest is the campaign's).
STEP_KEYS = ("name", "after", "if", "subject", "text", "html", "markdown", "attachments", "headers")

MAX_CONNECTIONS = 50
STATE_SCHEMES = ("postgresql://", "postgres://")


# Whether the files a campaign names must exist: `status` reads only the state and the list, so it
# loads a campaign without this check, and a missing template does not stop it.
_CHECK_FILES: ContextVar[bool] = ContextVar("check_files", default=True)


def load_campaign(path: str | Path, *, check_files: bool = True) -> Campaign:
    """Read and validate a campaign file; raise ConfigError/InputFileError naming file and line."""
    file = Path(path)
    token = _CHECK_FILES.set(check_files)
    try:
        return _build(load_mapping(file, "campaign file"), file.resolve())
    finally:
        _CHECK_FILES.reset(token)


def as_campaign(campaign: Campaign | str | Path) -> Campaign:
    """A loaded campaign, loading it first when given its file's path."""
    return campaign if isinstance(campaign, Campaign) else load_campaign(campaign)


def _build(top: Section, file: Path) -> Campaign:
    top.reject_unknown(TOP_KEYS)
    folder = file.parent

    name = top.text("name", required=True)
    assert name is not None
    if not NAME_RE.match(name):
        raise top.error(
            "name", "use letters, digits, '.', '_' and '-' only (it names the state file)"
        )

    sender = _address(top, "from")
    reply_to = _address(top, "reply_to")
    steps = _steps(top, folder)
    subject = top.text("subject", required=not steps)
    if subject is not None:
        _no_newlines(top, "subject", subject)

    bodies = _bodies(top, folder, required=not steps)
    if steps:
        _check_steps(top, steps, subject, bodies)

    unsubscribe_url, unsubscribe_mailto = _unsubscribe(top)
    endpoint, secret_env = _unsubscribe_endpoint(top)
    return Campaign(
        path=file,
        name=name,
        sender=sender,
        reply_to=reply_to,
        subject=subject or "",
        text=bodies["text"],
        html=bodies["html"],
        markdown=bodies["markdown"],
        recipients=_recipients(top, folder),
        vars=MappingProxyType(_vars(top)),
        attachments=_attachments(top, folder),
        headers=MappingProxyType(_headers(top)),
        unsubscribe=unsubscribe_url,
        unsubscribe_mailto=unsubscribe_mailto,
        unsubscribe_endpoint=endpoint,
        unsubscribe_secret_env=secret_env,
        suppression=read_suppression(top, folder),
        list_id=_list_id(top),
        inline_images=MappingProxyType(_inline_images(top, folder)),
        dkim_keys=read_dkim(top, folder),
        smtp=_smtp(top),
        api=_api(top),
        rate=_parsed(top, "rate", parse_rate),
        retry=_retry(top),
        inline_css=bool(top.get("inline_css", bool, "true or false", False)),
        state_path=_state(top, folder, name),
        state_url=_state_url(top),
        connections=read_connections(top),
        steps=steps,
        start=_sequence_text(top, "start", steps),
        timezone=_timezone(top, steps),
        window=_window(top, steps),
    )


def _bodies(section: Section, folder: Path, *, required: bool) -> dict[str, Path | None]:
    """`text`, `html` and `markdown` of the top level or of a step."""
    bodies = {key: _file(section, key, folder) for key in ("text", "html", "markdown")}
    if required and not any(bodies.values()):
        raise ConfigError(
            "a campaign needs at least one of 'text', 'html' or 'markdown'",
            path=section.file,
            line=section.line,
        )
    if bodies["markdown"] and (bodies["text"] or bodies["html"]):
        raise section.error(
            "markdown",
            "renders both the text and the HTML part; "
            "use it instead of 'text'/'html', not with them",
        )
    return bodies


def _steps(top: Section, folder: Path) -> tuple[Step, ...]:
    """`steps:` a list of mappings, each a message of the sequence (see mailcli.sequence)."""
    if not top.has("steps"):
        return ()
    node = top.node("steps")
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise top.error("steps", "must be a list of steps, each with a 'name' and an 'after'")
    steps: list[Step] = []
    for item in node.value:
        line = item.start_mark.line + 1
        if not isinstance(item, yaml.MappingNode):
            raise ConfigError(
                "'steps': every step must be a mapping with a 'name' and an 'after'",
                path=top.file,
                line=line,
            )
        sec = Section(item, top.file, f"{top.where}steps.")
        sec.reject_unknown(STEP_KEYS)
        name = sec.text("name", required=True)
        assert name is not None
        if not STEP_NAME_RE.match(name):
            raise sec.error(
                "name", "use letters, digits, '_' and '-' only, up to 64 (it names the step)"
            )
        if any(s.name == name for s in steps):
            raise sec.error("name", f"step {name!r} is given twice; each step needs its own name")
        if not sec.has("after"):
            raise ConfigError(
                f"step {name!r} needs 'after' (e.g. '0d', '2d'): when it goes, from the start",
                path=top.file,
                line=line,
            )
        try:
            after = parse_after(sec.value("after"))
        except ValueError as exc:
            raise sec.error("after", str(exc)) from None
        if steps and after.total_s <= steps[-1].after.total_s:
            raise sec.error(
                "after",
                f"steps out of order: {name!r} comes {after} after the start, not later than "
                f"{steps[-1].name!r} ({steps[-1].after}); 'after' must grow from step to step",
            )
        condition = sec.text("if")
        if condition is not None:
            _check_condition(sec, condition)
        subject = sec.text("subject")
        if subject is not None:
            _no_newlines(sec, "subject", subject)
        bodies = _bodies(sec, folder, required=False)
        steps.append(
            Step(
                name=name,
                after=after,
                line=line,
                condition=condition,
                subject=subject,
                text=bodies["text"],
                html=bodies["html"],
                markdown=bodies["markdown"],
                attachments=_attachments(sec, folder) if sec.has("attachments") else None,
                headers=MappingProxyType(_headers(sec)) if sec.has("headers") else None,
            )
        )
    return tuple(steps)


def _check_condition(sec: Section, condition: str) -> None:
    """An `if:` must be one Jinja expression (a syntax error is the file's, not a row's)."""
    from jinja2.sandbox import SandboxedEnvironment  # the syntax check only

    if is_template(condition):
        raise sec.error("if", "give the expression itself, without '{{ }}': plan == 'free'")
    try:
        SandboxedEnvironment().compile_expression(condition)
    except Exception as exc:  # jinja2's syntax errors, whatever their class
        raise sec.error("if", f"not a Jinja expression: {exc}") from None


def _check_steps(
    top: Section, steps: tuple[Step, ...], subject: str | None, bodies: Mapping[str, Path | None]
) -> None:
    """Every step ends up with a subject and a body, its own or the top level's."""
    for step in steps:
        if step.subject is None and subject is None:
            raise ConfigError(
                f"step {step.name!r} has no 'subject', and the campaign has none to give it",
                path=top.file,
                line=step.line,
            )
        if not step.sets_body and not any(bodies.values()):
            raise ConfigError(
                f"step {step.name!r} needs one of 'text', 'html' or 'markdown' (its own, or "
                "the campaign's)",
                path=top.file,
                line=step.line,
            )


def _sequence_text(top: Section, key: str, steps: tuple[Step, ...]) -> str | None:
    """`start:` (a template per row): only with `steps:`."""
    value = top.text(key)
    if value is not None and not steps:
        raise top.error(key, "goes with 'steps:' (a sequence)")
    if value is not None and not value.strip():
        raise top.error(key, "is empty")
    return value


def _timezone(top: Section, steps: tuple[Step, ...]) -> str | None:
    """`timezone:` one IANA zone for all (checked now) or a template per row."""
    value = _sequence_text(top, "timezone", steps)
    if value is not None and not is_template(value):
        try:
            load_zone(value)
        except ValueError as exc:
            raise top.error("timezone", str(exc)) from None
    return value


def _window(top: Section, steps: tuple[Step, ...]) -> Window | None:
    if not top.has("window"):
        return None
    if not steps:
        raise top.error("window", "goes with 'steps:' (a sequence)")
    try:
        return parse_window(top.value("window"))
    except ValueError as exc:
        raise top.error("window", str(exc)) from None


def _address(top: Section, key: str) -> str | None:
    value = top.text(key)
    if value is None:
        return None
    try:
        parse_mailbox(value)
    except AddressError as exc:
        raise top.error(key, str(exc)) from None
    return value


def _no_newlines(section: Section, key: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise section.error(key, "must be a single line (headers cannot contain line breaks)")


def _file(
    section: Section, key: str, folder: Path, *, what: str = "file", needed: bool = True
) -> Path | None:
    value = section.text(key)
    if value is None:
        return None
    path = _resolve(section, key, folder, value)
    if _CHECK_FILES.get() and not path.is_file() and (needed or path.exists()):
        line = section.items[key][0]
        reason = "is a folder" if path.is_dir() else "not found"
        raise InputFileError(
            f"'{section.where}{key}': {what} {reason}: {path}", path=section.file, line=line
        )
    return path


def _recipients(top: Section, folder: Path) -> RecipientsSource:
    if not top.has("recipients"):
        raise ConfigError("missing required key 'recipients'", path=top.file, line=top.line)
    # With a shared (PostgreSQL) state, the list is needed only on the host that imports it:
    # the others send what the store holds.
    needed = not (top.text("state") or "").startswith(STATE_SCHEMES)
    node = top.node("recipients")
    if isinstance(node, yaml.ScalarNode):
        path = _file(top, "recipients", folder, what="recipient list", needed=needed)
        assert path is not None
        return RecipientsSource(path=path)
    sec = top.section("recipients")
    assert sec is not None
    sec.reject_unknown(("path", "email_column", "name_column", "encoding", "delimiter"))
    path = _file(sec, "path", folder, what="recipient list", needed=needed)
    if path is None:
        raise ConfigError("missing required key 'recipients.path'", path=top.file, line=sec.line)
    encoding = sec.text("encoding") or "utf-8"
    try:
        import codecs

        codecs.lookup(encoding)
    except LookupError:
        raise sec.error("encoding", f"unknown encoding {encoding!r}") from None
    delimiter = sec.get("delimiter", str, "a single character") or ","
    if delimiter == "\\t":
        delimiter = "\t"
    if len(delimiter) != 1 or delimiter in '\r\n"':
        raise sec.error("delimiter", f"must be a single character, not {delimiter!r}")
    return RecipientsSource(
        path=path,
        email_column=(sec.text("email_column") or "email").strip(),
        name_column=(sec.text("name_column") or "").strip() or None,
        encoding=encoding,
        delimiter=delimiter,
    )


def _vars(top: Section) -> dict[str, Any]:
    value = top.get("vars", dict, "a mapping", {})
    assert value is not None
    for key in value:
        if not isinstance(key, str) or not key.isidentifier():
            raise top.error("vars", f"variable name {key!r} is not a valid identifier")
    return value


def _attachments(top: Section, folder: Path) -> tuple[Attachment, ...]:
    if not top.has("attachments"):
        return ()
    node = top.node("attachments")
    if not isinstance(node, yaml.SequenceNode):
        raise top.error("attachments", "must be a list of file paths")
    result = []
    for item in node.value:
        line = item.start_mark.line + 1
        if not isinstance(item, yaml.ScalarNode) or item.tag != "tag:yaml.org,2002:str":
            raise ConfigError(
                "'attachments': every entry must be a file path", path=top.file, line=line
            )
        source = str(item.value)
        if is_template(source):
            result.append(Attachment(source=source, path=None, line=line))
            continue
        path = _resolve(top, "attachments", folder, source, line)
        if _CHECK_FILES.get() and not path.is_file():
            raise InputFileError(f"'attachments': file not found: {path}", path=top.file, line=line)
        result.append(Attachment(source=source, path=path, line=line))
    return tuple(result)


def _headers(top: Section) -> dict[str, str]:
    sec = top.section("headers")
    if sec is None:
        return {}
    headers: dict[str, str] = {}
    for key in sec.items:
        if not HEADER_NAME_RE.match(key):
            raise sec.error(key, "is not a valid header name")
        if key.lower() in RESERVED_HEADERS:
            raise sec.error(key, "is set by mailcli itself; use the campaign key for it")
        value = sec.value(key)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise sec.error(key, f"must be a string, not {describe(value)}")
        text = str(value)
        _no_newlines(sec, key, text)
        headers[key] = text
    return headers


def _unsubscribe(top: Section) -> tuple[str | None, str | None]:
    """(https URL, mailto) templates: `unsubscribe: URL-or-mailto` or `{url: ..., mailto: ...}`."""
    if not top.has("unsubscribe"):
        return None, None
    if isinstance(top.node("unsubscribe"), yaml.MappingNode):
        sec = top.section("unsubscribe")
        assert sec is not None
        sec.reject_unknown(("url", "mailto", "endpoint", "secret_env"))
        url, mailto = sec.text("url"), sec.text("mailto")
        if url is not None and sec.has("endpoint"):
            raise sec.error("url", "give 'url' (your own) or 'endpoint' (mailcli's), not both")
        if url is None and mailto is None and not sec.has("endpoint"):
            raise top.error("unsubscribe", "give 'endpoint' or 'url' (https), 'mailto', or both")
        for key, value, scheme in (("url", url, "https://"), ("mailto", mailto, "mailto:")):
            if value is not None:
                _no_newlines(sec, key, value)
                if not is_template(value) and not value.startswith(scheme):
                    raise sec.error(key, f"must start with {scheme}")
        return url, mailto
    value = top.text("unsubscribe")
    assert value is not None
    _no_newlines(top, "unsubscribe", value)
    if not is_template(value) and not value.startswith(("https://", "mailto:")):
        raise top.error("unsubscribe", "must be an https:// URL or a mailto: address")
    return (None, value) if value.startswith("mailto:") else (value, None)


DEFAULT_SECRET_ENV = "MAILCLI_UNSUBSCRIBE_SECRET"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _unsubscribe_endpoint(top: Section) -> tuple[str | None, str | None]:
    """(endpoint, secret_env) of `unsubscribe: {endpoint: URL, secret_env: VAR}`."""
    if not top.has("unsubscribe") or not isinstance(top.node("unsubscribe"), yaml.MappingNode):
        return None, None
    sec = top.section("unsubscribe")
    assert sec is not None
    endpoint = sec.text("endpoint")
    secret_env = sec.text("secret_env")
    if endpoint is None:
        if secret_env is not None:
            raise sec.error("secret_env", "goes with 'endpoint' (mailcli's one-click endpoint)")
        return None, None
    problem = check_endpoint(endpoint)
    if problem:
        raise sec.error("endpoint", problem)
    if secret_env is not None and not ENV_NAME_RE.match(secret_env):
        raise sec.error(
            "secret_env", "names an environment variable (the secret itself never goes here)"
        )
    return endpoint, secret_env or DEFAULT_SECRET_ENV


def check_endpoint(url: str) -> str | None:
    """What is wrong with a one-click endpoint URL (https, or http on a loopback host)."""
    if any(c in url for c in "\r\n\0 "):
        return "the URL cannot contain spaces or line breaks"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        return f"not a usable URL: {exc}"
    if parts.query or parts.fragment:
        return "give the endpoint without a query or fragment (mailcli adds the token)"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return None  # development and tests
    return "must be an https:// URL (http:// only on 127.0.0.1 or localhost, for development)"


def read_suppression(top: Section, folder: Path) -> str | bool | None:
    """`suppression:` a SQLite file, a PostgreSQL URL, or false (none: a transactional
    campaign or profile that must reach everyone)."""
    if not top.has("suppression"):
        return None
    value = top.value("suppression")
    if value is False:
        return False
    if not isinstance(value, str) or not value.strip():
        raise top.error(
            "suppression",
            f"give a file (SQLite), a postgresql:// URL, or false for none, not {describe(value)}",
        )
    if value.startswith(STATE_SCHEMES):
        try:
            return check_state_url(value)
        except ValueError as exc:
            raise top.error("suppression", str(exc)) from None
    return str(_resolve(top, "suppression", folder, value))


def _list_id(top: Section) -> str | None:
    value = top.text("list_id")
    if value is None:
        return None
    _no_newlines(top, "list_id", value)
    if not re.search(r"<[A-Za-z0-9.-]+\.[A-Za-z0-9-]+>\s*$", value):
        raise top.error(
            "list_id",
            "must end with <list-label.domain> (RFC 2919), e.g. 'Acme News <news.acme.example>'",
        )
    return value


def _inline_images(top: Section, folder: Path) -> dict[str, Path]:
    sec = top.section("inline_images")
    if sec is None:
        return {}
    images: dict[str, Path] = {}
    for key in sec.items:
        if not re.match(r"^[A-Za-z0-9._-]+$", key):
            raise sec.error(key, "a content id may use letters, digits, '.', '_' and '-' only")
        path = _file(sec, key, folder, what="image")
        assert path is not None
        images[key] = path
    return images


def read_dkim(top: Section, folder: Path) -> tuple[DkimConfig, ...]:
    """The `dkim:` of a campaign file or an SMTP profile: one mapping, or a list of them (a
    signature each, typically one RSA and one Ed25519 key); () when absent."""
    if not top.has("dkim"):
        return ()
    node = top.node("dkim")
    if isinstance(node, yaml.MappingNode):
        sec = top.section("dkim")
        assert sec is not None
        return (_dkim_key(sec, folder),)
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise top.error(
            "dkim", "must be a mapping (domain, selector and a key) or a list of such mappings"
        )
    keys: list[DkimConfig] = []
    for item in node.value:
        line = item.start_mark.line + 1
        if not isinstance(item, yaml.MappingNode):
            raise ConfigError(
                "'dkim': every entry must be a mapping (domain, selector and a key)",
                path=top.file,
                line=line,
            )
        config = _dkim_key(Section(item, top.file, f"{top.where}dkim."), folder)
        name = (config.selector.lower(), config.domain.lower().rstrip("."))
        if any((k.selector.lower(), k.domain.lower().rstrip(".")) == name for k in keys):
            # One DNS record per selector: two keys under one selector cannot both verify.
            raise ConfigError(
                f"'dkim': selector {config.selector!r} of {config.domain} is given twice; "
                "each key needs a selector of its own",
                path=top.file,
                line=line,
            )
        keys.append(config)
    return tuple(keys)


def _dkim_key(sec: Section, folder: Path) -> DkimConfig:
    """One key of `dkim:` (the mapping itself, or an entry of its list)."""
    sec.reject_unknown(("domain", "selector", "key", "key_env", "key_keyring"))
    domain = sec.text("domain", required=True)
    selector = sec.text("selector", required=True)
    key = _file(sec, "key", folder, what="private key")
    key_env = sec.text("key_env")
    key_keyring = bool(sec.get("key_keyring", bool, "true or false", False))
    if [key is not None, key_env is not None, key_keyring].count(True) != 1:
        raise ConfigError(
            "'dkim' needs exactly one of 'key' (a private key file), 'key_env' (an "
            "environment variable holding the key) and 'key_keyring: true' (the key stored by "
            "`mailcli dkim store`)",
            path=sec.file,
            line=sec.line,
        )
    assert domain is not None and selector is not None
    for what, value in (("domain", domain), ("selector", selector)):
        if not value.isascii() or any(c.isspace() or c in ";=" for c in value):
            raise ConfigError(
                f"dkim.{what} {value!r} must be an ASCII DNS name (IDNA for a non-ASCII domain)",
                path=sec.file,
                line=sec.line,
            )
    return DkimConfig(
        domain=domain, selector=selector, key=key, key_env=key_env, key_keyring=key_keyring
    )


def _smtp(top: Section) -> SmtpConfig:
    sec = top.section("smtp")
    if sec is None:
        return SmtpConfig()
    sec.reject_unknown(("profile", *SMTP_KEYS))
    return read_smtp(sec)


SMTP_KEYS = ("host", "port", "security", "username", "timeout")


def _api(top: Section) -> ApiConfig | None:
    sec = top.section("api")
    if sec is None:
        return None
    if top.has("smtp"):
        raise top.error("api", "give 'smtp' or 'api', not both: a campaign has one transport")
    return read_api(sec)


def read_smtp(sec: Section) -> SmtpConfig:
    """The SMTP keys of a campaign's `smtp:` or a profile, validated (unknown keys: caller)."""
    port = sec.get("port", int, "a port number")
    if port is not None and not 0 < port < 65536:
        raise sec.error("port", f"{port} is not a port number (1-65535)")
    security = sec.text("security")
    if security is not None and security not in SECURITY_MODES:
        raise sec.error("security", f"must be one of {', '.join(SECURITY_MODES)}")
    timeout = sec.get("timeout", float, "a number of seconds")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise sec.error("timeout", "must be a positive number of seconds")
    return SmtpConfig(
        profile=sec.text("profile") if "profile" in sec.items else None,
        host=sec.text("host"),
        port=port,
        security=security,
        username=sec.text("username"),
        timeout=timeout,
    )


def _parsed(top: Section, key: str, parse: Callable[[str], T]) -> T | None:
    if not top.has(key):
        return None
    try:
        return parse(str(top.value(key)))
    except ValueError as exc:
        raise top.error(key, str(exc)) from None


def _retry(top: Section) -> Retry:
    sec = top.section("retry")
    if sec is None:
        return Retry()
    sec.reject_unknown(("attempts", "delay"))
    attempts = sec.get("attempts", int, "a whole number", DEFAULT_RETRY.attempts)
    assert attempts is not None
    if attempts < 1:
        raise sec.error("attempts", "must be at least 1")
    delay = DEFAULT_RETRY.delay_s
    if sec.has("delay"):
        try:
            delay = parse_duration(sec.value("delay"))
        except ValueError as exc:
            raise sec.error("delay", str(exc)) from None
    return Retry(attempts=attempts, delay_s=delay)


def _state(top: Section, folder: Path, name: str) -> Path:
    value = top.text("state")
    if value is None or value.startswith(STATE_SCHEMES):
        return folder / ".mailcli" / f"{name}.sqlite"
    return _resolve(top, "state", folder, value)


def _state_url(top: Section) -> str | None:
    value = top.text("state")
    if value is None or not value.startswith(STATE_SCHEMES):
        return None
    try:
        return check_state_url(value)
    except ValueError as exc:
        raise top.error("state", str(exc)) from None


def check_state_url(url: str) -> str:
    """A libpq URL for the state, refused if it carries a password (ValueError)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"not a usable PostgreSQL URL: {exc}") from None
    query = urllib.parse.parse_qs(parts.query)
    if parts.password is not None or "password" in query:
        raise ValueError(
            "a password does not belong in the campaign file: put it in PGPASSWORD or "
            "~/.pgpass (libpq reads both), and leave it out of the URL"
        )
    if any(c in url for c in "\r\n\0"):
        raise ValueError("the URL cannot contain a line break or a NUL byte")
    return url


def read_connections(section: Section) -> int | None:
    """`connections: N` of a campaign or a profile: 1 to MAX_CONNECTIONS."""
    value = section.get("connections", int, "a whole number")
    if value is not None and not 1 <= value <= MAX_CONNECTIONS:
        raise section.error("connections", f"must be from 1 to {MAX_CONNECTIONS}, not {value}")
    return value


def _resolve(section: Section, key: str, folder: Path, value: str, line: int | None = None) -> Path:
    """An absolute path for a value relative to the campaign folder; a clean error if impossible."""
    where = line if line is not None else section.items[key][0]
    if "\0" in value:
        raise ConfigError(
            f"'{section.where}{key}': a path cannot contain a NUL byte",
            path=section.file,
            line=where,
        )
    try:
        path = (folder / value).resolve()
        path.is_file()  # raises for a name the OS cannot hold (too long, ...)
    except OSError as exc:
        raise InputFileError(
            f"'{section.where}{key}': unusable path {value!r}: {exc.strerror or exc}",
            path=section.file,
            line=where,
        ) from None
    return path
