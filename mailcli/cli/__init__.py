"""The command-line shell over the mailcli library: parse options, call the core, print, exit.

Every `MailcliError` is caught in one place (`MailcliGroup.invoke`) and becomes a short message on
stderr and the contract's exit code; with `--json`, stdout still gets exactly one JSON object.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

import mailcli
from mailcli import sending
from mailcli.apiconf import PROVIDERS, ApiConfig
from mailcli.batch import Summary, dry_run
from mailcli.campaign import MAX_CONNECTIONS, SmtpConfig, load_campaign, parse_rate
from mailcli.checks import campaign_warnings
from mailcli.cli.console import (
    BatchProgress,
    console,
    estimate_rows,
    history_view,
    is_terminal,
    preview_view,
    sequence_view,
    setup_logging,
    status_view,
    summary_table,
)
from mailcli.errors import CantCreateError, ExitCode, MailcliError, UsageError
from mailcli.mailer import debug_transcript, sandbox_mailer
from mailcli.preview import Preview, preview_one, write_files
from mailcli.secrets import keyring_delete, keyring_key, keyring_set, keyring_write
from mailcli.sending import OneOff, one_off_message
from mailcli.sequence import parse_moment
from mailcli.sequence_status import sequence_place
from mailcli.settings import resolve_smtp
from mailcli.status import campaign_status, export_status, recipient_history
from mailcli.transport import SmtpSettings

if TYPE_CHECKING:  # imported where used: they pull in cryptography and aiosmtpd
    from mailcli.diagnose import Diagnosis

DEFAULT_OUTBOX = "outbox"


class MailcliGroup(TyperGroup):
    """Maps errors to exit codes in one place and lets `--sandbox` take an optional DIR."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _optional_sandbox_dir(list(args)))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except MailcliError as exc:
            _fail(ctx, str(exc), int(exc.exit_code), exc.summary)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", int(ExitCode.TEMPFAIL))
        except BrokenPipeError:
            # The reader went away (`mailcli preview ... | head`): stop quietly, as `cat` does.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(128 + signal.SIGPIPE) from None
        except (typer.Exit, typer.Abort, SystemExit, TyperException):
            raise  # usage errors (exit 2) and exits are Typer's to report
        except Exception as exc:  # a bug: still one line, never a traceback
            if os.environ.get("MAILCLI_TRACEBACK"):
                raise
            _fail(
                ctx,
                f"internal error: {exc.__class__.__name__}: {exc} "
                "(set MAILCLI_TRACEBACK=1 to see where)",
                int(ExitCode.SOFTWARE),
            )
        return None


def _optional_sandbox_dir(args: list[str]) -> list[str]:
    """`--sandbox` alone means `--sandbox outbox`; a following option or campaign is not a DIR."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--sandbox":
            nxt = args[i + 1] if i + 1 < len(args) else None
            takes_value = (
                nxt is not None
                and not nxt.startswith("-")
                and not (nxt.endswith((".yaml", ".yml")) and Path(nxt).is_file())
            )
            if not takes_value:
                out.append(f"--sandbox={DEFAULT_OUTBOX}")
                continue
        out.append(arg)
    return out


def _fail(ctx: Any, message: str, code: int, summary: Summary | None = None) -> None:
    """One error line (and its hint) on stderr; with --json the one object on stdout: the
    run's whole summary when the error ended a campaign run, else the error and exit code."""
    lines = message.splitlines() or [message]
    typer.echo(f"mailcli: error: {lines[0]}", err=True)
    for line in lines[1:]:
        typer.echo(f"  {line.strip()}", err=True)
    if ctx.meta.get("json"):
        _emit(summary.to_json() if summary is not None else {"error": message, "exit_code": code})
    elif summary is not None and summary.total:  # what the run had done before it stopped
        typer.echo(summary_line(summary))
    raise typer.Exit(code)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=None) + "\n")
    sys.stdout.flush()


app = typer.Typer(
    cls=MailcliGroup,
    name="mailcli",
    help="Mass mailing from the command line: YAML campaigns, CSV lists, Jinja templates, "
    "one persistent SMTP connection or an HTTP API provider.\n\n"
    "Example: mailcli init news && mailcli batch news/campaign.yaml --sandbox",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mailcli {mailcli.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Mass mailing from the command line."""


# Options shared by every command that talks SMTP.
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile", metavar="NAME", help="SMTP profile from config.yaml.", rich_help_panel="SMTP"
    ),
]
HostOpt = Annotated[
    str | None,
    typer.Option("--host", metavar="HOST", help="SMTP server host.", rich_help_panel="SMTP"),
]
PortOpt = Annotated[
    int | None,
    typer.Option(
        "--port", metavar="PORT", min=1, max=65535, help="SMTP server port.", rich_help_panel="SMTP"
    ),
]
SecurityOpt = Annotated[
    str | None,
    typer.Option(
        "--security", metavar="MODE", help="starttls, tls or none.", rich_help_panel="SMTP"
    ),
]
UsernameOpt = Annotated[
    str | None,
    typer.Option("--username", metavar="USER", help="SMTP login name.", rich_help_panel="SMTP"),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        min=0.1,
        help="Seconds to wait for the server.",
        rich_help_panel="SMTP",
    ),
]
InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure-skip-verify",
        help="DANGEROUS: do not verify the server's TLS certificate (anyone on the path can "
        "read the mail and the password).",
        rich_help_panel="SMTP",
    ),
]
DebugOpt = Annotated[
    bool,
    typer.Option(
        "--debug",
        help="Log the SMTP dialogue and each message's outcome on stderr and to --log-file "
        "(passwords and message data left out).",
        rich_help_panel="SMTP",
    ),
]
ApiOpt = Annotated[
    str | None,
    typer.Option(
        "--api",
        metavar="PROVIDER",
        help="Send through an HTTP API provider instead of SMTP: postmark, resend, sendgrid or "
        "mailgun (the token from its usual variable, the keyring or api.token_command).",
        rich_help_panel="SMTP",
    ),
]
SandboxOpt = Annotated[
    str | None,
    typer.Option(
        "--sandbox",
        metavar="[DIR]",
        help="Deliver to an embedded capture server that saves .eml files in DIR "
        "(default ./outbox); nothing leaves the machine.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Log what happens (connections, retries, refusals) on stderr."
    ),
]
LogFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--log-file",
        metavar="FILE",
        help="Append a timestamped log to FILE (for cron); --debug adds the SMTP dialogue.",
    ),
]
CampaignArg = Annotated[Path, typer.Argument(metavar="CAMPAIGN.yaml", help="Campaign file.")]


@dataclass(frozen=True)
class SmtpFlags:
    """The SMTP OPTIONS of one command line, and how to connect with them."""

    options: SmtpConfig
    insecure: bool = False
    debug: bool = False
    api: str | None = None  # --api PROVIDER

    def warn_unverified(self, settings: SmtpSettings | None) -> None:
        """Say loudly that TLS certificates are not checked (--insecure-skip-verify)."""
        if settings is not None and not settings.verify and settings.security != "none":
            typer.echo(
                f"mailcli: WARNING: TLS certificate verification is OFF for {settings.endpoint}",
                err=True,
            )

    def mailer(
        self,
        campaign: SmtpConfig | None = None,
        *,
        check: bool = True,
        campaign_api: ApiConfig | None = None,
    ) -> mailcli.Mailer:
        """The Mailer of flags, environment, campaign and profile (the core resolves them).

        The password is looked up now, before any row is read or any connection made, so that
        a missing one fails at once; on a terminal the CLI may prompt for it, a library never.
        """
        mailer = mailcli.Mailer.from_profile(
            overrides=self.options,
            campaign=campaign,
            insecure_skip_verify=self.insecure,
            prompt=True,
            campaign_api=campaign_api,
            api=self.api,
        )
        self.warn_unverified(mailer.settings)
        if mailer.recorder() is not None:
            typer.echo(
                "mailcli: WARNING: MAILCLI_SUPPRESS_SEND is set: messages are recorded in memory "
                "and thrown away, not sent; a campaign's progress is left as it was",
                err=True,
            )
        if check:
            mailer.check_password()
        return mailer


def _smtp_flags(
    profile: str | None,
    host: str | None,
    port: int | None,
    security: str | None,
    username: str | None,
    timeout: float | None,
    insecure: bool = False,
    debug: bool = False,
    api: str | None = None,
) -> SmtpFlags:
    if security is not None and security not in ("starttls", "tls", "none"):
        raise UsageError(f"--security must be starttls, tls or none, not {security!r}")
    if api is not None:
        if api not in PROVIDERS:
            raise UsageError(f"--api must be one of {', '.join(PROVIDERS)}, not {api!r}")
        if host is not None:
            raise UsageError("give --host (SMTP) or --api (an HTTP API provider), not both")
    return SmtpFlags(
        SmtpConfig(profile, host, port, security, username, timeout), insecure, debug, api
    )


def _json_mode(ctx: typer.Context, value: bool) -> None:
    ctx.meta["json"] = value


@app.command()
def batch(
    ctx: typer.Context,
    campaign_file: CampaignArg,
    dry_run_: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Read, validate, render and build "
            "every message; connect to nothing, write nothing.",
        ),
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option("--limit", metavar="N", min=1, help="Send at most N messages this run."),
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(
            "--rate",
            metavar="RATE",
            help="At most this rate, e.g. 10/s, 600/min (overrides the campaign's rate).",
        ),
    ] = None,
    skip_invalid: Annotated[
        bool,
        typer.Option("--skip-invalid", help="Send the valid rows even if some rows are invalid."),
    ] = False,
    retry_unknown: Annotated[
        bool,
        typer.Option(
            "--retry-unknown",
            help="Also send to recipients whose earlier delivery is 'unknown' (the server may "
            "have them already: they can get the message twice).",
        ),
    ] = False,
    resend_failed: Annotated[
        bool,
        typer.Option(
            "--resend-failed",
            help="Also send again to recipients a server refused (5xx) in an earlier run, "
            "once the cause is fixed upstream. A refusal that was not fixed is refused again "
            "and hurts your reputation with that receiver; resending policy or spam refusals "
            "looks like abuse. Suppressed addresses are still not sent.",
        ),
    ] = False,
    profile: ProfileOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    security: SecurityOpt = None,
    username: UsernameOpt = None,
    timeout: TimeoutOpt = None,
    insecure: InsecureOpt = False,
    debug: DebugOpt = False,
    api: ApiOpt = None,
    sandbox_dir: SandboxOpt = None,
    json_: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print errors only.")] = False,
    verbose: VerboseOpt = False,
    log_file: LogFileOpt = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            metavar="N",
            min=1,
            help="With --dry-run: render and build in N worker processes "
            "(default: one per core for lists over 512 KB, else 1).",
        ),
    ] = None,
    connections: Annotated[
        int | None,
        typer.Option(
            "--connections",
            metavar="N",
            min=1,
            max=MAX_CONNECTIONS,
            help="Send over N connections at once, under one rate (overrides the campaign's "
            "and the profile's `connections`; default 1).",
            rich_help_panel="SMTP",
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            metavar="TIME",
            help="With --dry-run, for a sequence: what a run at TIME would send (ISO 8601, "
            "e.g. 2026-03-04T09:30; without an offset, this machine's local time). -v lists "
            "each message.",
        ),
    ] = None,
) -> None:
    """Send a campaign to every recipient of its list, over one SMTP connection (or an HTTP
    API provider's batch calls), or several with --connections. A sequence (steps:) sends
    each recipient the step that is due now.

    Example: mailcli batch campaigns/welcome/campaign.yaml --dry-run
    """
    _json_mode(ctx, json_)
    setup_logging(verbose=verbose, debug=debug, log_file=log_file)
    parsed_rate = _rate(rate)
    flags = _smtp_flags(profile, host, port, security, username, timeout, insecure, debug, api)
    moment = _moment(at, dry_run_)
    campaign = load_campaign(campaign_file)
    if moment is not None and not campaign.is_sequence:
        raise UsageError("--at is for a sequence (a campaign with steps:)")
    if not quiet:
        _warn(campaign)
    display = BatchProgress(
        dry_run=dry_run_,
        expected_rows=estimate_rows(campaign.recipients.path),
        enabled=not (quiet or json_),
    )
    if dry_run_:
        with display.running():
            summary = dry_run(
                campaign,
                limit=limit,
                progress=display,
                jobs=jobs,
                at=moment,
                retry_unknown=retry_unknown,
                resend_failed=resend_failed,
            )
        _report(summary, json_=json_, quiet=quiet)
        raise typer.Exit(summary.exit_code)
    mailer = None
    if sandbox_dir is not None:
        if not (quiet or json_):
            typer.echo(
                f"sandbox: delivering to a capture server on this machine, saving .eml files "
                f"in {sandbox_dir}/",
                err=True,
            )
    else:
        mailer = flags.mailer(campaign.smtp, campaign_api=campaign.api)
    with _StopOnSignal(quiet or json_) as stop, display.running():
        summary = mailcli.send_campaign(
            campaign,
            mailer,
            limit=limit,
            rate=parsed_rate,
            skip_invalid=skip_invalid,
            retry_unknown=retry_unknown,
            resend_failed=resend_failed,
            progress=display,
            stop=stop,
            sandbox=sandbox_dir,
            connections=connections,
        )
    _report(summary, json_=json_, quiet=quiet)
    raise typer.Exit(summary.exit_code)


def _rate(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise UsageError(f"--rate: {exc}") from None


class _StopOnSignal:
    """SIGINT/SIGTERM: the first asks the run to stop after the message in flight (state is
    committed, exit 75); a second one stops at once (what was in flight stays 'unknown')."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if not self.quiet:
            typer.echo(
                f"mailcli: {signal.Signals(signum).name}: finishing the message in "
                "flight and saving progress (signal again to stop at once)",
                err=True,
            )

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _warn(campaign: mailcli.Campaign) -> None:
    """Deliverability warnings (one line each, never an error) on stderr."""
    for warning in campaign_warnings(campaign):
        typer.echo(f"mailcli: warning: {campaign.path.name}: {warning}", err=True)


def summary_line(summary: Summary) -> str:
    """The one-line human summary of a batch or dry run."""
    s = summary
    if s.dry_run:
        return (
            f"Dry run of campaign '{s.campaign}': {_n(s.total, 'row')}, "
            f"{_n(s.would_send, 'message')} built ({_size(s.bytes)}), {s.invalid} invalid, "
            f"{_n(s.duplicates, 'duplicate')}"
            + (f", {s.suppressed} suppressed" if s.suppressed else "")
            + "; nothing sent."
            + _steps_text(s)
        )
    done = "with nothing due now" if s.steps is not None else "done in earlier runs"
    earlier = f", {s.skipped} {done}" if s.skipped else ""
    earlier += f", {s.suppressed} suppressed" if s.suppressed else ""
    left = f", {s.pending} left for the next run" if s.pending else ""
    requests = f", {_n(s.requests, 'request')} to {s.transport}" if s.requests else ""
    return (
        f"Campaign '{s.campaign}': {s.sent} sent, {s.failed} failed, {s.deferred} deferred, "
        f"{s.unknown} unknown{earlier}{left}, {s.invalid} invalid, "
        f"{_n(s.duplicates, 'duplicate')} of {_n(s.total, 'row')} "
        f"({_n(s.connections, 'connection')}{requests}, {s.elapsed_s:.2f} s, "
        f"{s.rate_per_s:.1f} msg/s)." + _steps_text(s)
    )


def _steps_text(s: Summary) -> str:
    """A sequence's counts per step: ' Steps: welcome: 3 sent; tips: 2 waiting.'"""
    lines = s.step_lines()
    return " Steps: " + "; ".join(f"{n}: {t}" for n, t in lines) + "." if lines else ""


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB"):
        if n < 1024 or unit == "MB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"


def _moment(at: str | None, dry: bool) -> datetime | None:
    """`--at TIME` of a dry run (a real run sends what is due now)."""
    if at is None:
        return None
    if not dry:
        raise UsageError("--at goes with --dry-run: a real run sends what is due now")
    try:
        return parse_moment(at)
    except ValueError as exc:
        raise UsageError(f"--at: {exc}") from None


def _report(summary: Summary, *, json_: bool, quiet: bool) -> None:
    for problem in summary.problems:
        typer.echo(str(problem), err=True)
    if summary.invalid > len(summary.problems):
        typer.echo(f"... and {summary.invalid - len(summary.problems)} more invalid rows", err=True)
    for failure in summary.failures:
        code = f"{failure.code} " if failure.code else ""
        typer.echo(
            f"row {failure.row}: {failure.email}: {failure.status}: {code}{failure.reply}", err=True
        )
    if summary.error:
        typer.echo(f"mailcli: error: {summary.error}", err=True)
    if summary.exit_code == ExitCode.DATAERR:
        typer.echo(
            f"mailcli: {_n(summary.invalid, 'invalid row')}; nothing was sent"
            + ("" if summary.dry_run else " (--skip-invalid sends the valid rows)"),
            err=True,
        )
    logging.getLogger("mailcli.batch").info("%s", summary_line(summary))
    if json_:
        _emit(summary.to_json())
    elif not quiet:
        if is_terminal(sys.stdout):
            console().print(summary_table(summary))
        else:
            typer.echo(summary_line(summary))


@app.command()
def preview(
    ctx: typer.Context,
    campaign_file: CampaignArg,
    row: Annotated[
        int | None, typer.Option("--row", metavar="N", help="The data row to show (1-based).")
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", metavar="EMAIL", help="Show the row with this address.")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Check every row; exit 65 if any is invalid.")
    ] = False,
    fmt: Annotated[
        str, typer.Option("--format", metavar="FORMAT", help="text, html or raw (the exact bytes).")
    ] = "text",
    out: Annotated[
        Path | None,
        typer.Option("--out", metavar="DIR", help="Write .eml (and .html) files to DIR."),
    ] = None,
    step: Annotated[
        str | None,
        typer.Option(
            "--step",
            metavar="NAME",
            help="For a sequence: show this step's message (default: the first step). "
            "--all checks every step.",
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Show a message as it will be sent, without sending anything.

    Example: mailcli preview campaigns/welcome/campaign.yaml --row 2 --format raw
    """
    _json_mode(ctx, json_)
    if fmt not in ("text", "html", "raw"):
        raise UsageError(f"--format must be text, html or raw, not {fmt!r}")
    if sum(x is not None for x in (row, to)) + all_ > 1:
        raise UsageError("use one of --row, --to and --all")
    if all_ and step is not None:
        raise UsageError("--all checks every step of a sequence: leave out --step")
    campaign = load_campaign(campaign_file)
    _warn(campaign)
    if all_:
        written = [0]

        def save(p: Preview) -> None:
            written[0] += len(write_files(p, out)) if out is not None else 0

        summary = dry_run(campaign, on_message=save if out is not None else None, every_step=True)
        _report(summary, json_=json_, quiet=False)
        if out is not None and not json_:
            typer.echo(f"wrote {written[0]} files to {out}/")
        raise typer.Exit(summary.exit_code)
    shown = preview_one(campaign, row=row, to=to, step=step)
    if out is not None:
        for path in write_files(shown, out):
            typer.echo(f"wrote {path}", err=True)
    if json_:
        _emit(shown.to_json())
    elif fmt == "raw":
        sys.stdout.flush()
        sys.stdout.buffer.write(shown.built.data)
        sys.stdout.buffer.flush()
    elif fmt == "html":
        typer.echo(shown.html() or "(this message has no HTML part)")
    elif is_terminal(sys.stdout):
        console().print(preview_view(shown))
    else:
        typer.echo(_text_view(shown))


def _text_view(shown: Preview) -> str:
    parsed = shown.parsed
    lines = [f"Row {shown.row}: {shown.email}" + (f", step {shown.step}" if shown.step else "")]
    for name in ("From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID"):
        if parsed[name] is not None:
            lines.append(f"{name}: {parsed[name]}")
    skip = {
        "from",
        "to",
        "cc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
    lines.extend(f"{k}: {v}" for k, v in parsed.items() if k.lower() not in skip)
    for name, ctype, size in shown.attachments():
        lines.append(f"Attachment: {name} ({ctype}, {_size(size)})")
    lines.append(f"Parts: {', '.join(p.get_content_type() for p in parsed.walk())}")
    lines.append("")
    lines.append(shown.text() or "(this message has no text part)")
    return "\n".join(lines)


@app.command()
def send(
    ctx: typer.Context,
    to: Annotated[list[str], typer.Option("--to", metavar="ADDR", help="Recipient (repeatable).")],
    subject: Annotated[
        str, typer.Option("--subject", metavar="TEXT", help="Subject (a Jinja template).")
    ],
    cc: Annotated[
        list[str] | None, typer.Option("--cc", metavar="ADDR", help="Cc recipient (repeatable).")
    ] = None,
    bcc: Annotated[
        list[str] | None,
        typer.Option("--bcc", metavar="ADDR", help="Bcc recipient: envelope only, never a header."),
    ] = None,
    text: Annotated[
        str | None, typer.Option("--text", metavar="TEXT", help="Text body (a Jinja template).")
    ] = None,
    text_file: Annotated[
        Path | None, typer.Option("--text-file", metavar="F", help="Text body from a file (Jinja).")
    ] = None,
    html_file: Annotated[
        Path | None,
        typer.Option(
            "--html-file", metavar="F", help="HTML body from a file (Jinja, autoescaped)."
        ),
    ] = None,
    markdown_file: Annotated[
        Path | None,
        typer.Option(
            "--markdown-file", metavar="F", help="Markdown body: a text and an HTML part."
        ),
    ] = None,
    var: Annotated[
        list[str] | None,
        typer.Option("--var", metavar="KEY=VALUE", help="Template variable (repeatable)."),
    ] = None,
    attach: Annotated[
        list[Path] | None, typer.Option("--attach", metavar="FILE", help="Attachment (repeatable).")
    ] = None,
    sender: Annotated[
        str | None,
        typer.Option(
            "--from", metavar="ADDR", help="Sender (default: the profile's from or MAILCLI_FROM)."
        ),
    ] = None,
    reply_to: Annotated[
        str | None, typer.Option("--reply-to", metavar="ADDR", help="Reply-To address.")
    ] = None,
    profile: ProfileOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    security: SecurityOpt = None,
    username: UsernameOpt = None,
    timeout: TimeoutOpt = None,
    insecure: InsecureOpt = False,
    debug: DebugOpt = False,
    api: ApiOpt = None,
    verbose: VerboseOpt = False,
    log_file: LogFileOpt = None,
    dry_run_: Annotated[
        bool, typer.Option("--dry-run", help="Print the exact message bytes; send nothing.")
    ] = False,
    sandbox_dir: SandboxOpt = None,
    json_: JsonOpt = False,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", metavar="'NAME: VALUE'", help="Extra header (repeatable)."),
    ] = None,
    unsubscribe: Annotated[
        str | None,
        typer.Option(
            "--unsubscribe",
            metavar="URL",
            help="List-Unsubscribe target: an https:// URL (one-click) or a mailto: address.",
        ),
    ] = None,
    list_id: Annotated[
        str | None, typer.Option("--list-id", metavar="TEXT", help="List-Id header (RFC 2919).")
    ] = None,
    inline_image: Annotated[
        list[str] | None,
        typer.Option(
            "--inline-image",
            metavar="CID=FILE",
            help='An image the HTML shows as src="cid:CID" (repeatable).',
        ),
    ] = None,
) -> None:
    """Send one message to one or more recipients.

    Example: mailcli send --to ann@example.com --subject "Hi {{ name }}" --text "Hello {{ name }}"
    --var name=Ann --sandbox
    """
    _json_mode(ctx, json_)
    setup_logging(verbose=verbose, debug=debug, log_file=log_file)
    flags = _smtp_flags(profile, host, port, security, username, timeout, insecure, debug, api)
    spec = OneOff(
        to=tuple(to),
        cc=tuple(cc or ()),
        bcc=tuple(bcc or ()),
        subject=subject,
        text=text,
        text_file=text_file,
        html_file=html_file,
        markdown_file=markdown_file,
        variables=tuple(var or ()),
        attachments=tuple(attach or ()),
        sender=sender,
        reply_to=reply_to,
        headers=tuple(header or ()),
        unsubscribe=unsubscribe,
        list_id=list_id,
        inline_images=tuple(inline_image or ()),
    )
    if dry_run_ or sandbox_dir is not None:
        # Nothing to connect to: the profile gives only the sender and the DKIM key.
        mailer = mailcli.Mailer.recording_for_profile(flags.options.profile)
    else:
        mailer = flags.mailer()
    fallback = mailer.default_sender
    message = one_off_message(spec, sender_fallback=fallback if isinstance(fallback, str) else None)
    if dry_run_:
        built = message.build(signer=mailer.signer())
        if json_:
            _emit(
                {
                    "dry_run": True,
                    "message_id": built.message_id,
                    "size": len(built.data),
                    "envelope": {"mail_from": built.mail_from, "rcpt_to": list(built.rcpt_to)},
                }
            )
        else:
            sys.stdout.flush()
            sys.stdout.buffer.write(built.data)
            sys.stdout.buffer.flush()
        return
    if sandbox_dir is not None:
        with sandbox_mailer(sandbox_dir, like=mailer) as trial:
            delivery = trial.send(message)
    else:
        delivery = mailer.send(message)
    result = sending.report(message, delivery)
    if json_:
        _emit(result)
    else:
        accepted = len(delivery.recipients)
        if delivery.ok:
            typer.echo(
                f"sent {delivery.message_id} to {_n(accepted, 'recipient')} ({result['reply']})"
            )
        else:
            typer.echo(
                f"not sent: {delivery.message_id} is {delivery.status.value} ({result['reply']})",
                err=True,
            )
        for addr, reply in result["refused"].items():
            typer.echo(f"refused: {addr}: {reply}", err=True)
        for addr in delivery.suppressed:
            typer.echo(
                f"suppressed: {addr} is on the suppression list, not sent to "
                f"(mailcli suppress remove {addr})",
                err=True,
            )
    raise typer.Exit(result["exit_code"])


@app.command()
def status(
    ctx: typer.Context,
    campaign_file: CampaignArg,
    failed: Annotated[
        bool,
        typer.Option("--failed", help="List the recipients not delivered, with code and reply."),
    ] = False,
    export: Annotated[
        str | None,
        typer.Option(
            "--export",
            metavar="FILE",
            help="Write one row per recipient (address, row, status, code, reply, Message-ID, "
            "first and last try, tries, run id) to FILE: CSV, or JSON Lines when FILE ends in "
            ".jsonl; - writes CSV to stdout. Rows of the list not tried yet come last, "
            "as pending.",
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            metavar="STATUS",
            help="With --export: only the recipients in this status (sent, failed, deferred, "
            "unknown, pending); repeat it, or give a comma list.",
        ),
    ] = None,
    recipient: Annotated[
        str | None,
        typer.Option(
            "--recipient",
            metavar="ADDR",
            help="Show one recipient's history: status, Message-ID, first and last try, and "
            "each try (run, time, outcome, code, reply). Exit 65 if ADDR is in neither the "
            "state nor the list.",
        ),
    ] = None,
    sandbox_dir: Annotated[
        Path | None,
        typer.Option(
            "--sandbox", metavar="DIR", help="Show the progress of sandbox runs into DIR."
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Show where a campaign stands: recipients per status, the last run, the failures; or
    export every recipient's status (--export), or show one recipient's tries (--recipient).

    Example: mailcli status campaigns/welcome/campaign.yaml --failed

    Example: mailcli status campaigns/welcome/campaign.yaml --export sent.csv --status sent
    """
    _json_mode(ctx, json_)
    if failed + (export is not None) + (recipient is not None) > 1:
        raise UsageError("--failed, --export and --recipient do not go together: choose one")
    if only and export is None:
        raise UsageError("--status filters an export: add --export FILE (- for stdout)")
    if export == "-" and json_:
        raise UsageError("--export - writes the rows on stdout: --json cannot print there too")
    campaign = load_campaign(campaign_file, check_files=False)
    if sandbox_dir is not None:
        from mailcli.sandbox import sandboxed

        campaign = sandboxed(campaign, sandbox_dir)
    if recipient is not None and campaign.is_sequence:
        place = sequence_place(campaign, recipient)
        if json_:
            _emit(place.to_json())
        else:
            console().print(sequence_view(place, terminal=is_terminal(sys.stdout)))
        return
    if recipient is not None:
        history = recipient_history(campaign, recipient)
        if json_:
            _emit(history.to_json())
        else:
            console().print(history_view(history, terminal=is_terminal(sys.stdout)))
        return
    if export is not None:
        _export_status(campaign, export, only, json_)
        return
    report = campaign_status(campaign)
    if json_:
        _emit(report.to_json(with_recipients=failed))
        return
    view = status_view(report, with_recipients=failed, terminal=is_terminal(sys.stdout))
    console().print(view)
    if report.list_error:
        typer.echo(f"mailcli: warning: the list could not be read: {report.list_error}", err=True)


def _export_status(
    campaign: mailcli.Campaign, file: str, only: list[str] | None, json_: bool
) -> None:
    """`status --export`: the rows into FILE (or stdout), then one line (or object) saying so."""
    done = export_status(campaign, sys.stdout if file == "-" else file, statuses=only)
    if done.list_error:
        typer.echo(f"mailcli: warning: the list could not be read: {done.list_error}", err=True)
    if json_:
        _emit(
            {
                "campaign": campaign.name,
                "file": file,
                "format": "jsonl" if file.endswith(".jsonl") else "csv",
                "exported": done.rows,
                "not_tried": done.not_tried,
                "list_error": done.list_error,
            }
        )
    elif file != "-":
        untried = f" ({done.not_tried:,} not tried yet)" if done.not_tried else ""
        typer.echo(f"exported {done.rows:,} recipients{untried} to {file}")


@app.command("test-connection")
def test_connection(
    ctx: typer.Context,
    campaign_file: Annotated[
        Path | None,
        typer.Argument(metavar="[CAMPAIGN.yaml]", help="Take the SMTP settings of a campaign."),
    ] = None,
    profile: ProfileOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    security: SecurityOpt = None,
    username: UsernameOpt = None,
    timeout: TimeoutOpt = None,
    insecure: InsecureOpt = False,
    debug: DebugOpt = False,
    api: ApiOpt = None,
    verbose: VerboseOpt = False,
    log_file: LogFileOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Diagnose an SMTP server: banner, capabilities, TLS, certificate, AUTH and timings; or
    check an HTTP API provider's token with a read-only call (account and limits).

    Sends no message. Exit 0 when all works, 69 when the server or TLS fails, 77 when the
    login (or the API token) is refused.

    Example: mailcli test-connection --host smtp.example.com --port 587 --username me@example.com
    """
    _json_mode(ctx, json_)
    setup_logging(verbose=verbose, debug=debug, log_file=log_file)
    flags = _smtp_flags(profile, host, port, security, username, timeout, insecure, debug, api)
    loaded = load_campaign(campaign_file) if campaign_file is not None else None
    # The password is not looked up first: a missing one is part of the diagnosis.
    mailer = flags.mailer(
        loaded.smtp if loaded else None,
        check=False,
        campaign_api=loaded.api if loaded else None,
    )
    if mailer.api is not None:
        _test_api(mailer, json_)
    assert mailer.settings is not None  # from_profile raises when no server is given
    from mailcli.diagnose import diagnose

    report = diagnose(mailer.settings, mailer.password_source(), debug_transcript())
    if json_:
        _emit(report.to_json())
    else:
        typer.echo(format_diagnosis(report))
        if report.error:
            typer.echo(f"mailcli: error: {report.error}", err=True)
    raise typer.Exit(report.exit_code)


def _test_api(mailer: mailcli.Mailer, json_: bool) -> None:
    """test-connection for an HTTP API provider: a read-only call with the token."""
    from mailcli.httpapi import diagnose_api

    assert mailer.api is not None
    report = diagnose_api(
        mailer.api, mailer.token_source(), timeout=mailer.timeout, verify=mailer.verify
    )
    if json_:
        _emit(report.to_json())
    else:
        info = report.to_json()
        title = mailer.api.info.title
        lines = [f"{'Provider':<12}{title} at {report.config.url}"]
        if report.tls:
            tls = report.tls
            lines.append(
                f"{'TLS':<12}{tls['version']}, {tls['cipher']} ({tls['bits']} bits), "
                f"{tls['http_version']}"
            )
        if report.ok:
            lines.append(f"{'Token':<12}accepted ({report.status})")
            lines.append(f"{'Account':<12}{report.account.get('name')}")
            limits = report.account.get("limits")
            if limits:
                shown = ", ".join(f"{k} {v}" for k, v in limits.items() if v is not None)
                lines.append(f"{'Limits':<12}{shown}")
        total = sum(report.timings_ms.values())
        verdict = "OK" if report.ok else f"FAILED (exit {report.exit_code})"
        lines.append(f"{'Result':<12}{verdict}  {total:.1f} ms")
        typer.echo("\n".join(lines))
        if info["error"]:
            typer.echo(f"mailcli: error: {info['error']}", err=True)
    raise typer.Exit(report.exit_code)


def format_diagnosis(report: Diagnosis) -> str:
    """The human test-connection report, one phase a line, timings on the right."""
    s, info, t = report.settings, report.info, report.info.timings_ms
    rows: list[tuple[str, str, float | None]] = [
        (
            "Server",
            f"{s.endpoint} ({s.security})" + (f", peer {info.peer}" if info.peer else ""),
            t.get("connect"),
        ),
    ]
    if info.banner:
        rows.append(("Banner", info.banner, None))
    if info.capabilities_before_tls or (s.security != "starttls" and info.capabilities):
        first = info.capabilities_before_tls or info.capabilities
        rows.append(("EHLO", _caps_text(first), t.get("ehlo")))
    if info.tls_version or report.certificate:
        tls = (
            f"{info.tls_version}, {info.cipher} ({info.cipher_bits} bits)"
            if info.tls_version
            else "handshake failed"
        )
        rows.append(("STARTTLS" if s.security == "starttls" else "TLS", tls, t.get("starttls")))
    cert = report.certificate
    if cert:
        verdict = "verified" if cert["verified"] else f"NOT verified: {cert['problem'] or 'off'}"
        rows.append(("Certificate", f"subject {cert['subject']}", None))
        rows.append(("", f"issuer {cert['issuer']}", None))
        rows.append(
            (
                "",
                f"expires {cert['not_after'][:10]} (in {cert['expires_in_days']} "
                f"days); names {', '.join(cert['names']) or '-'}; {verdict}",
                None,
            )
        )
    if s.security == "starttls" and info.capabilities:
        rows.append(("EHLO (TLS)", _caps_text(info.capabilities), t.get("ehlo_tls")))
    auth = report.auth
    if auth:
        offered = " ".join(auth["mechanisms"]) or "none offered"
        if auth["ok"] is None:
            outcome = "no username given, login not tried"
        elif auth["ok"]:
            outcome = f"login as {auth['username']}: OK ({auth['mechanism']})"
        else:
            outcome = f"login as {auth['username']}: FAILED: {auth['error']}"
        rows.append(("AUTH", f"{offered}; {outcome}", t.get("auth")))
    verdict = "OK" if report.ok else f"FAILED (exit {report.exit_code})"
    rows.append(("Result", verdict, sum(t.values()) if t else None))
    lines = []
    for label, text, ms in rows:
        timing = f"  {ms:.1f} ms" if ms is not None else ""
        lines.append(f"{label:<12}{text}{timing}")
    return "\n".join(lines)


def _caps_text(features: dict[str, str]) -> str:
    return ", ".join(f"{k.upper()} {v.strip()}".strip() for k, v in features.items()) or "(none)"


@app.command()
def init(
    folder: Annotated[
        Path,
        typer.Argument(
            metavar="NAME",
            help="The folder to create; its name is the campaign's name.",
        ),
    ],
    sequence: Annotated[
        bool,
        typer.Option(
            "--sequence",
            help="Write a three-step onboarding sequence (steps:, start:, timezone:, window:) "
            "instead of one message.",
        ),
    ] = False,
) -> None:
    """Create a campaign folder: a commented campaign.yaml, text and HTML templates, a sample
    list; it runs as it is (--dry-run, --sandbox). --sequence makes a three-step sequence.

    Example: mailcli init spring-news && mailcli batch spring-news/campaign.yaml --sandbox
    """
    from mailcli.scaffold import create_campaign

    written = create_campaign(folder, sequence=sequence)
    typer.echo(f"Created campaign '{folder.resolve().name}' in {folder}/:")
    for path in written:
        typer.echo(f"  {path.relative_to(folder).as_posix()}")
    yaml = (folder / "campaign.yaml").as_posix()
    if sequence:
        typer.echo(
            "Next:\n"
            f"  mailcli batch {yaml} --dry-run --at 2026-03-03T10:00Z -v"
            "   # what a run then would send\n"
            f"  mailcli preview {yaml} --step tips --row 1   # one step's message\n"
            f"  mailcli batch {yaml} --sandbox      # send what is due now to ./outbox\n"
            f"  mailcli status {yaml} --sandbox     # where each step stands\n"
            "Then run it from cron every 10 minutes: each run sends what has come due."
        )
        return
    typer.echo(
        "Next:\n"
        f"  mailcli preview {yaml} --row 1      # one message, as it will arrive\n"
        f"  mailcli batch {yaml} --dry-run      # check every row\n"
        f"  mailcli batch {yaml} --sandbox      # deliver to ./outbox, nothing leaves the machine"
    )


password_app = typer.Typer(
    name="password",
    help="Store or delete the SMTP password (or an HTTP API token, --api PROVIDER) in the "
    "system keyring (service 'mailcli').\n\n"
    "Example: mailcli password set --host smtp.example.com --username news@example.com",
    no_args_is_help=True,
)
app.add_typer(password_app)


def _login_target(profile: str | None, host: str | None, username: str | None) -> tuple[str, str]:
    settings, _ = resolve_smtp(SmtpConfig(profile=profile, host=host, username=username))
    if not settings.username:
        raise UsageError("no username: give --username, MAILCLI_USERNAME, or a profile with one")
    return settings.username, settings.host


UnsubscribeSecretOpt = Annotated[
    str | None,
    typer.Option(
        "--unsubscribe",
        metavar="VAR",
        help="The one-click unsubscribe secret a campaign names with secret_env: VAR "
        "(MAILCLI_UNSUBSCRIBE_SECRET by default), kept as the keyring entry unsubscribe:VAR.",
    ),
]


@password_app.command("set")
def password_set(
    profile: ProfileOpt = None,
    host: HostOpt = None,
    username: UsernameOpt = None,
    api: Annotated[
        str | None,
        typer.Option("--api", metavar="PROVIDER", help="Store an HTTP API provider's token."),
    ] = None,
    unsubscribe: UnsubscribeSecretOpt = None,
) -> None:
    """Store the password for USERNAME@HOST (or the API token of --api PROVIDER, or the
    one-click unsubscribe secret of --unsubscribe VAR); read from a hidden prompt, or stdin if
    piped.

    Example: printf '%s\\n' "$SECRET" | mailcli password set --host smtp.example.com
    --username me@example.com
    """
    if unsubscribe is not None:
        from mailcli.unsubscribe import secret_bytes

        entry = _unsubscribe_entry(unsubscribe)
        secret = _read_secret(f"Unsubscribe secret for {unsubscribe}", "secret")
        secret_bytes(secret, "the secret given")
        keyring_write(entry, secret)
        typer.echo(f"stored the unsubscribe secret in the system keyring (entry {entry})")
        return
    if api is not None:
        entry = _api_entry(api)
        keyring_write(entry, _read_secret(f"API token for {api}", "token"))
        typer.echo(f"stored the {api} API token in the system keyring (entry {entry})")
        return
    user, server = _login_target(profile, host, username)
    keyring_set(user, server, _read_secret(f"Password for {keyring_key(user, server)}"))
    typer.echo(f"stored the password for {keyring_key(user, server)} in the system keyring")


def _read_secret(prompt: str, noun: str = "password") -> str:
    """A secret from a hidden prompt (asked twice), or the first line of stdin when piped."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"{prompt}: ")
        if getpass.getpass("Again: ") != first:
            raise UsageError(f"the two {noun}s differ; nothing was stored")
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    if not first:
        raise UsageError(f"empty {noun}; nothing was stored")
    return first


def _unsubscribe_entry(name: str) -> str:
    from mailcli.campaign import ENV_NAME_RE
    from mailcli.unsubscribe import keyring_entry

    if not ENV_NAME_RE.match(name):
        raise UsageError("--unsubscribe takes a variable name such as MAILCLI_UNSUBSCRIBE_SECRET")
    return keyring_entry(name)


def _api_entry(api: str) -> str:
    if api not in PROVIDERS:
        raise UsageError(f"--api must be one of {', '.join(PROVIDERS)}, not {api!r}")
    from mailcli.secrets import api_keyring_entry

    return api_keyring_entry(api)


@password_app.command("delete")
def password_delete(
    profile: ProfileOpt = None,
    host: HostOpt = None,
    username: UsernameOpt = None,
    api: Annotated[
        str | None,
        typer.Option("--api", metavar="PROVIDER", help="Delete an HTTP API provider's token."),
    ] = None,
    unsubscribe: UnsubscribeSecretOpt = None,
) -> None:
    """Delete the stored password for USERNAME@HOST (or the API token of --api PROVIDER, or
    the unsubscribe secret of --unsubscribe VAR).

    Example: mailcli password delete --host smtp.example.com --username me@example.com
    """
    if unsubscribe is not None:
        from mailcli.secrets import keyring_remove

        entry = _unsubscribe_entry(unsubscribe)
        if not keyring_remove(entry):
            raise UsageError(f"no unsubscribe secret is stored (entry {entry})")
        typer.echo(f"deleted the unsubscribe secret from the system keyring (entry {entry})")
        return
    if api is not None:
        from mailcli.secrets import keyring_remove

        entry = _api_entry(api)
        if not keyring_remove(entry):
            raise UsageError(f"no {api} API token is stored (entry {entry})")
        typer.echo(f"deleted the {api} API token from the system keyring")
        return
    user, server = _login_target(profile, host, username)
    if not keyring_delete(user, server):
        raise UsageError(f"no password is stored for {keyring_key(user, server)}")
    typer.echo(f"deleted the password for {keyring_key(user, server)}")


dkim_app = typer.Typer(
    name="dkim",
    help="Create, store and delete DKIM signing keys (RSA or Ed25519, for dkim: in a "
    "campaign).\n\n"
    "Example: mailcli dkim keygen acme.example s1 --out dkim-private.pem",
    no_args_is_help=True,
)
app.add_typer(dkim_app)
DomainArg = Annotated[str, typer.Argument(metavar="DOMAIN", help="The signing domain (d=).")]
SelectorArg = Annotated[str, typer.Argument(metavar="SELECTOR", help="The selector (s=).")]


def _dkim_published(
    domain: str, selector: str, record: str, source: str, *, key_type: str = "rsa"
) -> None:
    """Print the record to publish and the `dkim:` line that signs with the key."""
    name = f"{selector}._domainkey.{domain}"
    # A TXT string holds at most 255 bytes; zone files take a long record as several strings.
    strings = " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))
    typer.echo(f"Publish this TXT record at {name}:\n\n{record}\n")
    typer.echo(f"(as a zone file line: {name}. IN TXT ( {strings} ))\n")
    line = f"{{domain: {domain}, selector: {selector}, {source}}}"
    if key_type != "ed25519":
        typer.echo(f"Then sign a campaign with:\n\ndkim: {line}")
        return
    # Receivers that do not know Ed25519 skip its signature (RFC 8463 6): an RSA one goes too.
    typer.echo(
        "Receivers that do not know Ed25519 ignore its signature, so sign with an RSA key too "
        f"(under another selector):\n\ndkim:\n  - {{domain: {domain}, selector: RSA-SELECTOR, "
        f"key: dkim-private.pem}}\n  - {line}"
    )


@dkim_app.command("keygen")
def dkim_keygen(
    domain: DomainArg,
    selector: SelectorArg,
    out: Annotated[
        Path | None,
        typer.Option("--out", metavar="FILE", help="Write the private key to FILE (mode 0600)."),
    ] = None,
    keyring_: Annotated[
        bool, typer.Option("--keyring", help="Store the private key in the system keyring.")
    ] = False,
    key_type: Annotated[
        str,
        typer.Option(
            "--type",
            metavar="TYPE",
            help="rsa (rsa-sha256, what every receiver checks) or ed25519 (ed25519-sha256, "
            "RFC 8463: a second signature beside an RSA one, under its own selector).",
        ),
    ] = "rsa",
    bits: Annotated[
        int | None,
        typer.Option("--bits", min=1024, max=4096, help="RSA key size (default 2048)."),
    ] = None,
) -> None:
    """Create an RSA or Ed25519 key pair; print the DNS TXT record that publishes its public half.

    Example: mailcli dkim keygen acme.example e1 --type ed25519 --out ed25519.pem
    """
    from mailcli.dkimsign import KEY_TYPES, DkimKey, generate_ed25519_key, generate_key
    from mailcli.secrets import dkim_keyring_entry, keyring_write

    if key_type not in KEY_TYPES:
        raise UsageError(f"--type must be {' or '.join(KEY_TYPES)}, not {key_type!r}")
    if key_type == "ed25519" and bits is not None:
        raise UsageError("--bits is for RSA keys; an Ed25519 key has one size")
    if (out is None) == (not keyring_):
        raise UsageError("give exactly one of --out FILE and --keyring")
    pem = generate_ed25519_key() if key_type == "ed25519" else generate_key(bits or 2048)
    record = DkimKey(pem, domain=domain, selector=selector, where="new key").public_key_record
    if out is not None:
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise UsageError(f"{out} exists; not overwriting a key") from None
        except OSError as exc:
            raise CantCreateError(f"cannot write the key: {exc.strerror}", path=out) from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        source = f"key: {out}"
    else:
        keyring_write(dkim_keyring_entry(domain, selector), pem.decode("ascii"))
        source = "key_keyring: true"
    _dkim_published(domain, selector, record, source, key_type=key_type)


@dkim_app.command("store")
def dkim_store(domain: DomainArg, selector: SelectorArg) -> None:
    """Store a private key (RSA or Ed25519), read from stdin, in the system keyring.

    The key is PEM, or the one line of base64 that dkimpy's `dknewkey --ktype ed25519` writes.

    Example: mailcli dkim store acme.example s1 < dkim-private.pem
    """
    from mailcli.dkimsign import DkimKey
    from mailcli.secrets import dkim_keyring_entry, keyring_write

    if sys.stdin.isatty():
        raise UsageError("pipe the key in: mailcli dkim store DOMAIN SELECTOR < key.pem")
    pem = sys.stdin.read()
    key = DkimKey(pem.encode(), domain=domain, selector=selector, where="stdin")
    keyring_write(dkim_keyring_entry(domain, selector), pem)
    _dkim_published(domain, selector, key.public_key_record, "key_keyring: true", key_type=key.type)


@dkim_app.command("delete")
def dkim_delete(domain: DomainArg, selector: SelectorArg) -> None:
    """Delete a DKIM private key from the system keyring.

    Example: mailcli dkim delete acme.example s1
    """
    from mailcli.secrets import dkim_keyring_entry, keyring_remove

    entry = dkim_keyring_entry(domain, selector)
    if not keyring_remove(entry):
        raise UsageError(f"no DKIM key is stored under {entry!r}")
    typer.echo(f"deleted {entry!r} from the system keyring")


@app.command()
def sink(
    host: Annotated[
        str, typer.Option("--host", metavar="HOST", help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option("--port", metavar="PORT", min=0, max=65535, help="Port (0: any free one)."),
    ] = 8025,
    folder: Annotated[
        Path, typer.Option("--dir", metavar="DIR", help="Where to save .eml files.")
    ] = Path(DEFAULT_OUTBOX),
) -> None:
    """Run a local SMTP capture server that saves every message as a .eml file.

    Example: mailcli sink --port 2525 --dir captured
    """
    stop = threading.Event()
    from mailcli.sandbox import EmlWriter, SmtpServer

    class ReportingWriter(EmlWriter):
        def save(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> Path:
            path = super().save(mail_from, rcpt_tos, data)
            typer.echo(
                f"saved {path.name} from <{mail_from}> to {', '.join(rcpt_tos)} "
                f"({len(data)} bytes)",
                err=True,
            )
            return path

    writer = ReportingWriter(folder)
    server = SmtpServer(writer, host, port).start()
    typer.echo(
        f"mailcli sink: listening on {server.host}:{server.port}, saving to {folder}/ "
        "(Ctrl-C to stop)",
        err=True,
    )

    def finish(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        server.stop()
    typer.echo(f"mailcli sink: stopped after {writer.count} messages", err=True)


# The list hygiene commands live in their own module (they use the helpers above).
from mailcli.cli.hygiene import bounces_app, suppress_app  # noqa: E402

app.add_typer(suppress_app)
app.add_typer(bounces_app)


unsubscribe_app = typer.Typer(
    name="unsubscribe",
    help="One-click unsubscribe (RFC 8058): the endpoint that the signed links of "
    "`unsubscribe: {endpoint: URL, secret_env: VAR}` point to.\n\n"
    "Example: mailcli unsubscribe serve news/campaign.yaml --port 8080",
    no_args_is_help=True,
)
app.add_typer(unsubscribe_app)


@unsubscribe_app.command("serve")
def unsubscribe_serve(
    campaign_file: Annotated[
        Path | None,
        typer.Argument(
            metavar="CAMPAIGN.yaml",
            help="Take the secret's variable and the suppression list from this campaign.",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", metavar="HOST", help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option("--port", metavar="PORT", min=0, max=65535, help="Port (0: any free one)."),
    ] = 8080,
    secret_env: Annotated[
        str | None,
        typer.Option(
            "--secret-env",
            metavar="VAR",
            help="The environment variable holding the signing secret (default: the "
            "campaign's secret_env, else MAILCLI_UNSUBSCRIBE_SECRET); the keyring entry "
            "unsubscribe:VAR is tried next.",
        ),
    ] = None,
) -> None:
    """Serve the one-click unsubscribe endpoint: a POST with a valid signed link suppresses the
    address; a GET only shows a confirmation button. For production, see README's 'One-click
    unsubscribe' (gunicorn 'mailcli.unsubscribe:app' behind HTTPS).

    Example: mailcli unsubscribe serve news/campaign.yaml --port 8080
    """
    from mailcli.campaign import ENV_NAME_RE
    from mailcli.unsubscribe import campaign_app, listen_url, make_server

    if secret_env is not None and not ENV_NAME_RE.match(secret_env):
        raise UsageError(f"--secret-env takes a variable's name, not {secret_env!r}")
    campaign = load_campaign(campaign_file) if campaign_file is not None else None
    setup_logging(verbose=True, debug=False, log_file=None)  # one line per request
    endpoint = campaign_app(campaign, secret_env=secret_env)
    try:
        server = make_server(endpoint, host, port)
    except OSError as exc:  # as `sink` says it: the address is taken, or not this machine's
        from mailcli.errors import UnavailableError

        endpoint.close()
        raise UnavailableError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    typer.echo(
        f"mailcli unsubscribe: listening on {listen_url(server)}, unsubscribing into "
        f"{endpoint.where} (Ctrl-C to stop)",
        err=True,
    )
    stop = threading.Event()

    def finish(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    worker = threading.Thread(target=server.serve_forever, name="unsubscribe", daemon=True)
    worker.start()
    try:
        while not stop.wait(0.2):
            pass
    finally:
        server.shutdown()
        server.server_close()
        endpoint.close()
    typer.echo("mailcli unsubscribe: stopped", err=True)


def main() -> None:
    """Console-script entry point."""
    app()
