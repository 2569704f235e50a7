"""`mailcli.Mailer`: where messages go and how, for applications; `connect()` for many at once.

A Mailer holds settings, not a connection: `send` opens one for the message and closes it, and
`connect()` gives one persistent connection for many messages, pipelined where the server offers
it. The password is looked up as the CLI does (MAILCLI_PASSWORD, the keyring, the profile's
password_command; never a prompt from a library), once, when the first login needs it.

Inside `record_messages()`, with `Mailer(outbox=True)` or with `MAILCLI_SUPPRESS_SEND=1`, a Mailer
delivers into an in-memory outbox and opens no socket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from mailcli.apiconf import ApiConfig
from mailcli.campaign import SECURITY_MODES, Campaign, DkimConfig, SmtpConfig
from mailcli.compose import Address, Message
from mailcli.delivery import Delivery, DeliveryStatus, Transport, without_smtputf8
from mailcli.envelope import Built
from mailcli.errors import AuthError, ConfigError, UnavailableError
from mailcli.outbox import Outbox, OutboxTransport, recording, suppressed_by_env
from mailcli.sender import GroupSender, Stopped
from mailcli.suppression import SqliteSuppression, SuppressionList, key_of, locate
from mailcli.transport import DEFAULT_PORTS, SmtpSettings, SmtpTransport, Transcript

if TYPE_CHECKING:
    from mailcli.aio import AsyncConnection
    from mailcli.dkimsign import DkimSigner
    from mailcli.settings import Profile

PasswordSource = Callable[[], str]
_smtp_log = logging.getLogger("mailcli.smtp")


def debug_transcript() -> Transcript | None:
    """The SMTP dialogue to the `mailcli.smtp` logger when it logs DEBUG (`--debug`), else None.

    AUTH secrets and message data are left out by the transport itself.
    """
    if not _smtp_log.isEnabledFor(logging.DEBUG):
        return None
    return lambda line: _smtp_log.debug("%s", line)


class Mailer:
    """Sends messages over SMTP (or into an outbox), with a default sender and DKIM key."""

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        security: str = "starttls",
        username: str | None = None,
        password: str | PasswordSource | None = None,
        timeout: float = 30.0,
        default_sender: Address | None = None,
        *,
        outbox: bool | None = None,
        verify: bool = True,
        local_hostname: str | None = None,
        dkim: DkimConfig | Sequence[DkimConfig] | None = None,
        max_connections: int = 8,
        api: str | ApiConfig | None = None,
        token: str | PasswordSource | None = None,
        suppression: str | Path | bool | None = None,
    ) -> None:
        if security not in SECURITY_MODES:
            raise ConfigError(
                f"security must be one of {', '.join(SECURITY_MODES)}, not {security!r}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
            raise ConfigError(f"port must be a number, not {port!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise ConfigError(f"max_connections must be a whole number, not {max_connections!r}")
        if max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, not {max_connections}")
        #: The most connections concurrent `send_async` calls open on one event loop.
        self.max_connections = max_connections
        self.timeout = float(timeout)
        self.verify = verify
        #: The HTTP API provider messages go through (None: SMTP).
        self.api: ApiConfig | None = ApiConfig(api) if isinstance(api, str) else api
        if self.api is not None and host is not None:
            raise ConfigError("give host= (SMTP) or api= (an HTTP API provider), not both")
        self._token: PasswordSource | None = (lambda: token) if isinstance(token, str) else token
        self.settings: SmtpSettings | None = None
        if host is not None:
            self.settings = SmtpSettings(
                host=host,
                port=port or DEFAULT_PORTS[security],
                security=security,
                username=username,
                timeout=float(timeout),
                verify=verify,
                local_hostname=local_hostname,
            )
        self.default_sender = default_sender
        # outbox=None: record inside record_messages() or with MAILCLI_SUPPRESS_SEND; True: always
        # into `self.outbox`; False: never (the sandbox, which must really deliver).
        self._records = outbox
        self.outbox: Outbox | None = (
            Outbox() if outbox or (outbox is None and suppressed_by_env()) else None
        )
        self._password: PasswordSource | None = (
            (lambda: password) if isinstance(password, str) else password
        )
        self._profile: Profile | None = None
        self._prompt = False
        # One key or several (RSA and Ed25519): one DKIM-Signature each.
        self._dkim: tuple[DkimConfig, ...] = (
            () if dkim is None else (dkim,) if isinstance(dkim, DkimConfig) else tuple(dkim)
        )
        self._signer: DkimSigner | None = None
        self._check_dkim("dkim")
        # The suppression list: None the default one (or the profile's), False none, else a
        # SQLite file or a postgresql:// URL. Opened on first use.
        self.suppression = suppression
        self._blocklist: SuppressionList | bool | None = False  # False: not opened yet
        self._blocklist_lock = threading.Lock()

    # -- construction from the CLI's configuration ------------------------------------------

    @classmethod
    def from_profile(
        cls,
        name: str | None = None,
        *,
        overrides: SmtpConfig | None = None,
        campaign: SmtpConfig | None = None,
        insecure_skip_verify: bool = False,
        prompt: bool = False,
        campaign_api: ApiConfig | None = None,
        api: str | None = None,
    ) -> Mailer:
        """The Mailer of a CLI profile (None: MAILCLI_PROFILE, else `default`), with the
        MAILCLI_* variables over it, as `mailcli batch` resolves them.

        `overrides` are command-line style settings (highest precedence); `campaign` a
        campaign's `smtp:` keys, `campaign_api` its `api:`; `api` a provider named on the
        command line (`--api`). `prompt=True` asks for a password on a terminal when no other
        source has one, as the command line does.
        """
        from mailcli.settings import default_sender, resolve_api, resolve_smtp

        options = overrides or SmtpConfig()
        if name is not None:
            options = dataclasses.replace(options, profile=name)
        chosen = resolve_api(options, campaign, campaign_api, api)
        if chosen is not None:
            config, profile = chosen
            if options.timeout is not None:  # --timeout over the `api.timeout` of a file
                config = dataclasses.replace(config, timeout=options.timeout)
            mailer = cls(
                api=config,
                timeout=options.timeout or (profile.smtp.timeout if profile else None) or 30.0,
                verify=not (insecure_skip_verify or (profile and profile.insecure_skip_verify)),
                default_sender=default_sender(profile),
            )
            mailer._profile = profile
            mailer._dkim = profile.dkim_keys if profile else ()
            mailer._check_dkim(f"profile {profile.name!r}: dkim" if profile else "dkim")
            return mailer
        settings, profile = resolve_smtp(
            options, campaign, insecure_skip_verify=insecure_skip_verify
        )
        mailer = cls._resolved(settings, profile)
        mailer._prompt = prompt
        return mailer

    @classmethod
    def recording_for_profile(cls, name: str | None = None) -> Mailer:
        """A Mailer that records into `outbox` with a profile's sender and DKIM key, and needs
        no server (what `mailcli send --dry-run` builds with)."""
        from mailcli.settings import default_sender, load_profile

        profile = load_profile(name or os.environ.get("MAILCLI_PROFILE"))
        mailer = cls(outbox=True, default_sender=default_sender(profile))
        mailer._dkim = profile.dkim_keys if profile else ()
        return mailer

    @classmethod
    def from_env(cls) -> Mailer:
        """The Mailer of the MAILCLI_HOST, _PORT, _SECURITY, _USERNAME and _FROM variables
        alone (no config file); the password from the usual sources."""
        from mailcli.settings import resolve_smtp

        settings, _ = resolve_smtp(SmtpConfig(), use_profiles=False)
        return cls._resolved(settings, None)

    @classmethod
    def _resolved(cls, settings: SmtpSettings, profile: Profile | None) -> Mailer:
        mailer = cls()
        mailer.settings = settings
        mailer._profile = profile
        from mailcli.settings import default_sender

        mailer.default_sender = default_sender(profile)
        mailer._dkim = profile.dkim_keys if profile else ()
        return mailer

    # -- sending ----------------------------------------------------------------------------

    def send(self, message: Message) -> Delivery:
        """Send one message over a connection opened for it and closed after."""
        built = self.build([message])  # a bad message is refused before any connection
        screened = self.screen(built)
        if not screened.todo:  # every recipient is suppressed: no connection at all
            return screened.finish([])[0]
        with self.connect() as connection:
            return screened.finish(connection._deliver(screened.todo))[0]

    async def send_async(self, message: Message) -> Delivery:
        """Send one message without blocking the event loop; concurrent calls share a pool of
        at most `max_connections` connections, pipelined where the server offers it."""
        from mailcli.aio import send_async

        return await send_async(self, message)

    def connect_async(self) -> AsyncConnection:
        """One connection for asyncio: `async with mailer.connect_async() as conn:`."""
        from mailcli.aio import AsyncConnection

        return AsyncConnection(self)

    async def aclose(self) -> None:
        """Close the connections `send_async` keeps open on this event loop (idle ones also
        close by themselves after 10 s)."""
        from mailcli.aio import close_pool

        await close_pool(self)

    def suppression_choice(self) -> str | bool | None:
        """The list this Mailer names: its own `suppression=`, else its profile's (None: no
        choice made, the default list)."""
        choice = self.suppression
        if choice is None and self._profile is not None:
            choice = self._profile.suppression
        return str(choice) if isinstance(choice, Path) else choice

    def suppression_list(self) -> SuppressionList | None:
        """The suppression list this Mailer checks (None: none), opened once."""
        with self._blocklist_lock:
            if self._blocklist is False:
                location = locate(self.suppression_choice())
                self._blocklist = location.open(create=False) if location else None
            assert not isinstance(self._blocklist, bool)
            return self._blocklist

    def screen(self, built: Sequence[Built]) -> Screened:
        """The messages with suppressed recipients taken out of their envelopes."""
        return Screened(built, self.suppression_list())

    async def screen_async(self, built: Sequence[Built]) -> Screened:
        """`screen` without blocking the loop on a list in PostgreSQL."""
        blocklist = self.suppression_list() if self._blocklist is not False else None
        if blocklist is None or isinstance(blocklist, SqliteSuppression):
            return self.screen(built)  # a local file: a fraction of a millisecond
        import asyncio

        return await asyncio.to_thread(self.screen, built)

    def build(self, messages: Sequence[Message]) -> list[Built]:
        """The finished messages, signed with this Mailer's DKIM key; raises for a bad one."""
        signer = self.signer()
        return [m.build(default_sender=self.default_sender, signer=signer) for m in messages]

    def connect(self) -> Connection:
        """One persistent connection for many messages: `with mailer.connect() as conn:`."""
        return Connection(self, self.transport())

    def transport(self) -> Transport:
        """A new, unopened transport for this Mailer (an outbox one while recording)."""
        outbox = self.recorder()
        if outbox is not None:
            return OutboxTransport(outbox)
        if self.api is not None:
            from mailcli.httpapi import ApiTransport

            return ApiTransport(
                self.api, self.token_source(), timeout=self.timeout, verify=self.verify
            )
        if self.settings is None:
            raise ConfigError(
                "no SMTP server given",
                hint="pass host= (or api=) to Mailer, or use Mailer.from_profile() / "
                "Mailer.from_env()",
            )
        return SmtpTransport(
            self.settings, password=self.password_source(), transcript=debug_transcript()
        )

    def recorder(self) -> Outbox | None:
        """The outbox this Mailer records into now, or None when it really sends."""
        if self._records is False:
            return None
        return self.outbox if self.outbox is not None else recording()

    def password_source(self) -> PasswordSource | None:
        """What gives the login password (None: no login); resolved once, when first asked."""
        if self.settings is None or not self.settings.username:
            return None
        if self._password is None:
            from mailcli.secrets import password_source

            # A library never prompts; the CLI asks for a prompt on a terminal (None: if a tty).
            interactive = None if self._prompt else False
            self._password = password_source(self.settings, self._profile, interactive=interactive)
        return self._password

    def token_source(self) -> PasswordSource:
        """What gives the API token: the one given, else the provider's variable, the keyring
        (`api:PROVIDER`) or `api.token_command`; resolved once, when first asked."""
        assert self.api is not None
        if self._token is None:
            from mailcli.secrets import token_source

            self._token = token_source(self.api)
        return self._token

    def check_password(self) -> None:
        """Look the password (or API token) up now (ConfigError if there is none), before
        any work starts."""
        if self.recorder() is None:
            source = self.token_source() if self.api is not None else self.password_source()
            if source is not None:
                source()

    def check_campaign(self, campaign: Campaign) -> None:
        """Raise ConfigError, naming the key and the provider, for what the campaign asks and
        this Mailer's HTTP API cannot carry (before anything is sent)."""
        if self.api is None or self.recorder() is not None:
            return
        from mailcli.providers import provider_for

        provider = provider_for(self.api)
        asked = {"dkim": bool(campaign.dkim_keys)}
        for key, why in provider.cannot.items():
            if asked.get(key):
                raise ConfigError(
                    f"'{key}': {provider.title} cannot carry mailcli's own {key}: {why}; remove "
                    f"'{key}' from the campaign, or send with provider mailgun (MIME) or SMTP",
                    path=campaign.path,
                )

    def _check_dkim(self, where: str) -> None:
        if self.api is None or not self._dkim:
            return
        from mailcli.providers import provider_for

        why = provider_for(self.api).cannot.get("dkim")
        if why is not None:
            raise ConfigError(
                f"{where}: {self.api.info.title} cannot carry mailcli's own DKIM signature: {why}"
            )

    @property
    def batch_connections(self) -> int | None:
        """The `connections:` of this Mailer's profile, for a campaign that names none."""
        return self._profile.connections if self._profile is not None else None

    def signer_pending(self) -> bool:
        """A DKIM key is configured and not read yet (reading it touches the disk)."""
        return bool(self._dkim) and self._signer is None

    def signer(self) -> DkimSigner | None:
        """The DKIM signer of this Mailer's keys, read once (None: no `dkim`)."""
        if self._dkim and self._signer is None:
            from mailcli.dkimsign import load_signer

            self._signer = load_signer(self._dkim)
        return self._signer

    def __repr__(self) -> str:
        where = (
            "outbox" if self.outbox is not None else (self.api or self.settings or "unconfigured")
        )
        return f"<Mailer {where}>"


@contextlib.contextmanager
def sandbox_mailer(folder: str | Path, like: Mailer | None = None) -> Iterator[Mailer]:
    """A Mailer that delivers to an embedded capture server saving .eml files in `folder`
    (`--sandbox`), with the sender and DKIM key of `like`; it really delivers, even inside
    `record_messages()`."""
    from mailcli.sandbox import sandbox

    with sandbox(Path(folder)) as (server, _writer):
        trial = Mailer(server.host, server.port, "none", outbox=False)
        if like is not None:
            trial.default_sender, trial._dkim = like.default_sender, like._dkim
            # The trial checks the list the real send would.
            profile = like._profile.suppression if like._profile is not None else None
            trial.suppression = like.suppression if like.suppression is not None else profile
        yield trial


class Screened:
    """Messages checked against the suppression list: `todo` is what to send (suppressed
    recipients out of each envelope), `finish` gives every message its Delivery."""

    def __init__(self, built: Sequence[Built], blocklist: SuppressionList | None) -> None:
        self.built = list(built)
        every = {r for b in self.built for r in b.rcpt_to}
        blocked = blocklist.suppressed(every) if blocklist is not None and every else set()
        self.todo: list[Built] = []
        self._plan: list[tuple[int | None, tuple[str, ...]]] = []
        for b in self.built:
            out = tuple(r for r in b.rcpt_to if key_of(r) in blocked)
            if len(out) == len(b.rcpt_to):
                self._plan.append((None, out))
                continue
            self._plan.append((len(self.todo), out))
            keep = tuple(r for r in b.rcpt_to if key_of(r) not in blocked)
            self.todo.append(b._replace(rcpt_to=keep) if out else b)

    def finish(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """A Delivery for every message, given those of `todo` in order."""
        results = []
        for (index, out), b in zip(self._plan, self.built, strict=True):
            if index is None:
                results.append(
                    Delivery(
                        DeliveryStatus.SUPPRESSED,
                        b.message_id,
                        reply="every recipient is on the suppression list",
                        suppressed=out,
                    )
                )
            else:
                d = deliveries[index]
                results.append(dataclasses.replace(d, suppressed=out) if out else d)
        return results


class Connection:
    """One open connection of a Mailer: `send` and `send_many` until the block ends."""

    def __init__(self, mailer: Mailer, transport: Transport) -> None:
        self.mailer = mailer
        self.transport = transport
        self.sleep: Callable[[float], None] = time.sleep

    def __enter__(self) -> Connection:
        self.transport.open()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """End the connection (the `with` block does it); never raises."""
        self.transport.close()

    @property
    def connections(self) -> int:
        """Connections opened so far (more than one after a reconnect)."""
        return self.transport.connections

    def send(self, message: Message) -> Delivery:
        """Send one message; its outcome, refusals included, is data."""
        return self.send_many([message])[0]

    def send_many(self, messages: Sequence[Message]) -> list[Delivery]:
        """Send messages in order, pipelined where offered: one Delivery for each.

        Every message is built (and checked for header injection) before the first is sent. A
        message that could not be handed over because the server stayed unreachable comes back
        `deferred`, one handed over without an answer `unknown`.
        """
        if not messages:
            return []
        built = self.mailer.build(messages)
        if not self.transport.is_open:
            self.transport.open()
        return self.deliver(built)

    def deliver(self, built: Sequence[Built]) -> list[Delivery]:
        """Send finished messages (see `Mailer.build`); one Delivery for each, in order.

        Recipients on the suppression list are left out of the envelope; a message with none
        left is not sent (its Delivery is `suppressed`).
        """
        screened = self.mailer.screen(built)
        return screened.finish(self._deliver(screened.todo) if screened.todo else [])

    def _deliver(self, built: Sequence[Built]) -> list[Delivery]:
        results, todo = without_smtputf8(built, self.transport.smtputf8, self.transport.endpoint)
        sender = GroupSender(self.transport, sleep=self.sleep)
        try:
            sent = sender.send([built[i] for i in todo])
        except Stopped as stopped:
            if isinstance(stopped.error, AuthError | UnavailableError | ConfigError) and all(
                r is None for r in stopped.results
            ):
                # Refused credentials, an untrusted certificate or a provider refusing the
                # account before any message was taken (an API token is first checked by the
                # first request): raised, as over SMTP when the connection is opened.
                raise stopped.error from None
            sent = [
                result
                if result is not None
                else Delivery(
                    DeliveryStatus.DEFERRED, built[i].message_id, code=None, reply=stopped.reason
                )
                for result, i in zip(stopped.results, todo, strict=True)
            ]
        for index, delivery in zip(todo, sent, strict=True):
            results[index] = delivery
        return [r for r in results if r is not None]
