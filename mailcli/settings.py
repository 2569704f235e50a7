"""SMTP settings: profiles in the user config file, MAILCLI_* variables, campaign keys and flags.

Precedence, highest first: command-line flags, MAILCLI_* environment variables, the campaign's
`smtp:` keys, the profile, built-in defaults. The profile is the one named by `--profile`, then by
`MAILCLI_PROFILE`, then by the campaign's `smtp.profile`, else `default` if the config file has it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mailcli.addresses import AddressError, parse_mailbox
from mailcli.apiconf import ApiConfig, read_api
from mailcli.campaign import (
    SECURITY_MODES,
    SMTP_KEYS,
    DkimConfig,
    SmtpConfig,
    read_connections,
    read_dkim,
    read_smtp,
    read_suppression,
)
from mailcli.errors import ConfigError, UsageError
from mailcli.transport import AUTH_MECHANISMS, DEFAULT_PORTS, SmtpSettings
from mailcli.yamlconf import Section, load_mapping

PROFILE_KEYS = (
    *SMTP_KEYS,
    "from",
    "password_command",
    "auth",
    "allow_plaintext_auth",
    "insecure_skip_verify",
    "dkim",
    "api",
    "connections",
    "suppression",
)


@dataclass(frozen=True, slots=True)
class Profile:
    """One named entry under `profiles:` in config.yaml."""

    name: str
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    sender: str | None = None
    password_command: str | None = None
    auth: str | None = None
    allow_plaintext_auth: bool = False
    insecure_skip_verify: bool = False
    # `dkim:` (one key or a list): signs what `mailcli send` sends through this profile
    dkim_keys: tuple[DkimConfig, ...] = ()
    api: ApiConfig | None = None  # an HTTP API provider instead of an SMTP server
    connections: int | None = None  # for `mailcli batch` (a campaign's own key wins)
    # `suppression:` the list what goes through this profile is checked against (a file or a
    # postgresql:// URL), False for none (a transactional profile); None: the default list.
    suppression: str | bool | None = None


def config_file(env: Mapping[str, str] | None = None) -> Path:
    """`$MAILCLI_CONFIG`, else config.yaml in the platform's user config folder."""
    env = os.environ if env is None else env
    if env.get("MAILCLI_CONFIG"):
        return Path(env["MAILCLI_CONFIG"]).expanduser()
    if sys.platform == "win32":
        base = Path(env.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "mailcli" / "config.yaml"


def load_profile(name: str | None, env: Mapping[str, str] | None = None) -> Profile | None:
    """The named profile (an error if it is missing), or `default` if present, or None."""
    path = config_file(env)
    if not path.is_file():
        if name is not None:
            raise ConfigError(
                f"profile {name!r} not found: there is no config file {path}",
                hint="create it with a `profiles:` mapping, or set MAILCLI_CONFIG",
            )
        return None
    top = load_mapping(path, "config file")
    top.reject_unknown(("profiles",))
    profiles = top.section("profiles")
    wanted = name or "default"
    if profiles is None or wanted not in profiles.items:
        if name is None:
            return None
        known = ", ".join(profiles.items) if profiles else "none"
        raise ConfigError(f"profile {name!r} not found (profiles: {known})", path=path)
    sec = profiles.section(wanted)
    if sec is None:
        raise profiles.error(wanted, "must be a mapping of SMTP settings")
    return _profile(wanted, sec, path.parent)


def _profile(name: str, sec: Section, folder: Path) -> Profile:
    sec.reject_unknown(PROFILE_KEYS)
    auth = sec.text("auth")
    if auth is not None and auth.lower() not in AUTH_MECHANISMS:
        raise sec.error("auth", f"must be one of {', '.join(AUTH_MECHANISMS)}")
    sender = sec.text("from")
    if sender is not None:
        try:
            parse_mailbox(sender)
        except AddressError as exc:
            raise sec.error("from", str(exc)) from None
    api_sec = sec.section("api")
    api = read_api(api_sec) if api_sec is not None else None
    if api is not None and sec.has("host"):
        raise sec.error("api", "give an SMTP 'host' or an 'api', not both: a profile has one")
    return Profile(
        name=name,
        api=api,
        smtp=read_smtp(sec),
        sender=sender,
        password_command=sec.text("password_command"),
        auth=auth.lower() if auth else None,
        allow_plaintext_auth=bool(sec.get("allow_plaintext_auth", bool, "true or false")),
        insecure_skip_verify=bool(sec.get("insecure_skip_verify", bool, "true or false")),
        dkim_keys=read_dkim(sec, folder),
        connections=read_connections(sec),
        suppression=read_suppression(sec, folder),
    )


def default_sender(profile: Profile | None, env: Mapping[str, str] | None = None) -> str | None:
    """The sender when a message names none: the profile's `from`, else MAILCLI_FROM."""
    env = os.environ if env is None else env
    if profile is not None and profile.sender:
        return profile.sender
    return env.get("MAILCLI_FROM") or None


def resolve_smtp(
    options: SmtpConfig,
    campaign: SmtpConfig | None = None,
    env: Mapping[str, str] | None = None,
    *,
    insecure_skip_verify: bool = False,
    use_profiles: bool = True,
) -> tuple[SmtpSettings, Profile | None]:
    """Merge flags, environment, campaign and profile into the settings to connect with.

    `use_profiles=False` leaves the config file out (`Mailer.from_env`: the variables alone).
    """
    env = os.environ if env is None else env
    campaign = campaign or SmtpConfig()
    profile = (
        load_profile(options.profile or env.get("MAILCLI_PROFILE") or campaign.profile, env)
        if use_profiles
        else None
    )
    p = (profile or Profile(name="")).smtp

    def pick(flag: object, var: str, camp: object, prof: object) -> object:
        for value in (flag, env.get(var) or None, camp, prof):
            if value is not None:
                return value
        return None

    host = pick(options.host, "MAILCLI_HOST", campaign.host, p.host)
    if host is None:
        raise ConfigError(
            "no SMTP server given",
            hint="set --host, MAILCLI_HOST, `smtp: {host: ...}` in the campaign or a profile in "
            f"{config_file(env)}; or try it out with --sandbox",
        )
    security = str(
        pick(options.security, "MAILCLI_SECURITY", campaign.security, p.security) or "starttls"
    )
    if security not in SECURITY_MODES:
        raise UsageError(f"security must be one of {', '.join(SECURITY_MODES)}, not {security!r}")
    port_value = pick(options.port, "MAILCLI_PORT", campaign.port, p.port)
    try:
        port = int(str(port_value)) if port_value is not None else DEFAULT_PORTS[security]
    except ValueError:
        raise UsageError(f"MAILCLI_PORT must be a port number, not {port_value!r}") from None
    if not 0 < port < 65536:
        raise UsageError(f"{port} is not a port number (1-65535)")
    username = pick(options.username, "MAILCLI_USERNAME", campaign.username, p.username)
    timeout = options.timeout or campaign.timeout or p.timeout or 30.0
    settings = SmtpSettings(
        host=str(host),
        port=port,
        security=security,
        username=str(username) if username else None,
        timeout=float(timeout),
        verify=not (insecure_skip_verify or (profile is not None and profile.insecure_skip_verify)),
        auth=profile.auth if profile else None,
        allow_plaintext_auth=profile.allow_plaintext_auth if profile else False,
    )
    return settings, profile


def resolve_api(
    options: SmtpConfig,
    campaign: SmtpConfig | None = None,
    campaign_api: ApiConfig | None = None,
    api: str | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[ApiConfig, Profile | None] | None:
    """The HTTP API provider to send with, or None for SMTP.

    Precedence: `--api PROVIDER` (with the campaign's, else the profile's, `api:` options when
    they name the same provider); `--host` (SMTP); the campaign's `api:`; then an SMTP host
    from MAILCLI_HOST or the campaign's `smtp.host` means SMTP; last, the profile's `api:`.
    """
    env = os.environ if env is None else env
    campaign = campaign or SmtpConfig()
    name = options.profile or env.get("MAILCLI_PROFILE") or campaign.profile
    if api is not None:
        if campaign_api is not None and campaign_api.provider == api:
            return campaign_api, load_profile(name, env)
        profile = load_profile(name, env)
        if profile is not None and profile.api is not None and profile.api.provider == api:
            return profile.api, profile
        try:
            return ApiConfig(provider=api), profile
        except ConfigError as exc:
            raise UsageError(f"--api {api}: {exc.message.partition(': ')[2]}") from None
    if options.host:
        return None  # --host on the command line: SMTP, whatever the campaign says
    if campaign_api is not None:
        return campaign_api, load_profile(name, env)
    if env.get("MAILCLI_HOST") or campaign.host:
        return None
    profile = load_profile(name, env)
    if profile is not None and profile.api is not None:
        return profile.api, profile
    return None
