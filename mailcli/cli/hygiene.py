"""`mailcli suppress ...` and `mailcli bounces scan`: the list hygiene commands."""

from __future__ import annotations

import contextlib
import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from mailcli.addresses import AddressError, normalize_address
from mailcli.campaign import load_campaign
from mailcli.errors import CantCreateError, DataError, InputFileError, UsageError
from mailcli.suppression import (
    SOFT_LIMIT,
    Location,
    Reason,
    SuppressionList,
    default_location,
    for_campaign,
)

suppress_app = typer.Typer(
    name="suppress",
    help="The suppression list shared by every campaign: addresses never mailed again.\n\n"
    "Example: mailcli suppress add ann@example.com --reason unsubscribed",
    no_args_is_help=True,
)
bounces_app = typer.Typer(
    name="bounces",
    help="Read bounces and complaints, and suppress the addresses that must not be mailed.\n\n"
    "Example: mailcli bounces scan ~/Maildir/.bounces",
    no_args_is_help=True,
)

ListOpt = Annotated[
    str | None,
    typer.Option(
        "--list",
        metavar="FILE|URL",
        help="The suppression list: a SQLite file or a postgresql:// URL (default: "
        "$MAILCLI_SUPPRESSION, else suppression.sqlite in the user data folder).",
    ),
]
CampaignOpt = Annotated[
    Path | None,
    typer.Option(
        "--campaign",
        metavar="CAMPAIGN.yaml",
        help="Use the list this campaign uses (its suppression:, or its PostgreSQL state).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
REASONS = ", ".join(r.value for r in Reason)


def chosen_location(target: str | None, campaign: Path | None) -> Location:
    """The list a command works on: --list, else the campaign's, else the default one."""
    if target is not None and campaign is not None:
        raise UsageError("give --list or --campaign, not both")
    if target is not None:
        if target.startswith(("postgresql://", "postgres://")):
            from mailcli.campaign import check_state_url

            try:
                check_state_url(target)
            except ValueError as exc:
                raise UsageError(f"--list: {exc}") from None
            return Location(target)
        return Location(str(Path(target).expanduser().resolve()))
    if campaign is not None:
        loaded = load_campaign(campaign, check_files=False)
        found = for_campaign(loaded)
        if found is None:
            raise UsageError(
                f"{campaign}: the campaign turns the suppression list off (suppression: false)"
            )
        return found
    return Location(default_location())


def _reason(text: str) -> Reason:
    try:
        return Reason(text)
    except ValueError:
        raise UsageError(f"--reason must be one of {REASONS}, not {text!r}") from None


def _address(text: str, where: str) -> str:
    try:
        return normalize_address(text)
    except AddressError as exc:
        raise DataError(f"{where}: {exc}") from None


def _emit(obj: dict[str, Any]) -> None:
    from mailcli.cli import _emit as emit

    emit(obj)


@suppress_app.command("add")
def suppress_add(
    addresses: Annotated[list[str], typer.Argument(metavar="ADDRESS...", help="Addresses.")],
    reason: Annotated[
        str, typer.Option("--reason", help=f"Why: {REASONS}.", show_default=True)
    ] = "manual",
    note: Annotated[str | None, typer.Option("--note", help="A note kept with each.")] = None,
    target: ListOpt = None,
    campaign: CampaignOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Suppress addresses: no campaign, `send` or library call mails them again.

    Example: mailcli suppress add ann@example.com bob@example.com --reason complaint
    """
    why = _reason(reason)
    checked = [_address(a, "address") for a in addresses]
    location = chosen_location(target, campaign)
    lst = location.open()
    try:
        added = [a for a in checked if lst.add(a, why, detail=note)]
    finally:
        lst.close()
    if json_:
        _emit({"list": _where(location), "added": added, "already": _others(checked, added)})
        return
    already = len(checked) - len(added)
    typer.echo(f"suppressed {len(added)} in {_where(location)} ({already} already were)")


@suppress_app.command("remove")
def suppress_remove(
    addresses: Annotated[list[str], typer.Argument(metavar="ADDRESS...", help="Addresses.")],
    target: ListOpt = None,
    campaign: CampaignOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Make addresses deliverable again (their soft bounces are forgotten too).

    Example: mailcli suppress remove ann@example.com
    """
    checked = [_address(a, "address") for a in addresses]
    location = chosen_location(target, campaign)
    lst = location.open()
    try:
        removed = [a for a in checked if lst.remove(a)]
    finally:
        lst.close()
    if json_:
        _emit({"list": _where(location), "removed": removed, "absent": _others(checked, removed)})
        return
    typer.echo(f"removed {len(removed)} of {len(checked)} from {_where(location)}")
    for missing in _others(checked, removed):
        typer.echo(f"mailcli: note: {missing} was not on the list", err=True)


@suppress_app.command("list")
def suppress_list(
    reason: Annotated[
        str | None, typer.Option("--reason", help=f"Only this reason: {REASONS}.")
    ] = None,
    target: ListOpt = None,
    campaign: CampaignOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Print the suppressed addresses, one a line with the reason.

    Example: mailcli suppress list --reason hard-bounce
    """
    only = _reason(reason) if reason is not None else None
    location = chosen_location(target, campaign)
    lst = location.open(create=False)
    try:
        entries = [e for e in lst.entries() if only is None or e.reason is only]
    finally:
        lst.close()
    if json_:
        _emit(
            {
                "list": _where(location),
                "count": len(entries),
                "entries": [e.to_json() for e in entries],
            }
        )
        return
    width = max((len(e.email) for e in entries), default=0)
    for e in entries:
        source = f"  {e.campaign}" if e.campaign else ""
        typer.echo(f"{e.email:<{width}}  {e.reason.value:<12}  {e.created}{source}")


EXPORT_COLUMNS = ("email", "reason", "created", "campaign", "message_id", "detail")


@suppress_app.command("export")
def suppress_export(
    file: Annotated[str, typer.Argument(metavar="FILE.csv", help="Where to write; - for stdout.")],
    target: ListOpt = None,
    campaign: CampaignOpt = None,
) -> None:
    """Write the list as CSV (email, reason, created, campaign, message_id, detail).

    Example: mailcli suppress export suppressed.csv
    """
    location = chosen_location(target, campaign)
    lst = location.open(create=False)
    try:
        if file == "-":
            count = _write_csv(lst, sys.stdout)
        else:
            try:
                with open(file, "w", newline="", encoding="utf-8") as handle:
                    count = _write_csv(lst, handle)
            except OSError as exc:
                raise CantCreateError(f"cannot write: {exc.strerror}", path=file) from None
    finally:
        lst.close()
    if file != "-":
        typer.echo(f"exported {count} addresses to {file}")


def _write_csv(lst: SuppressionList, handle: TextIO) -> int:
    writer = csv.writer(handle)
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for e in lst.entries():
        writer.writerow([e.email, e.reason.value, e.created, e.campaign, e.message_id, e.detail])
        count += 1
    return count


@suppress_app.command("import")
def suppress_import(
    file: Annotated[Path, typer.Argument(metavar="FILE.csv", help="A CSV with a header row.")],
    column: Annotated[
        str, typer.Option("--column", help="The column holding the addresses.")
    ] = "email",
    reason: Annotated[
        str,
        typer.Option("--reason", help=f"Why, for rows without a 'reason' column: {REASONS}."),
    ] = "manual",
    target: ListOpt = None,
    campaign: CampaignOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Suppress every address of a CSV file (another tool's export, an old unsubscribe list).

    Every row is checked first: a bad address or reason stops the import (exit 65), naming
    the line, and nothing is added. A `reason` column, when present, gives each row's reason.

    Example: mailcli suppress import unsubscribed.csv --reason unsubscribed
    """
    default = _reason(reason)
    rows = _read_import(file, column, default)
    location = chosen_location(target, campaign)
    lst = location.open()
    try:
        added = sum(lst.add(email, why, detail=f"imported from {file.name}") for email, why in rows)
    finally:
        lst.close()
    if json_:
        _emit({"list": _where(location), "rows": len(rows), "added": added})
        return
    typer.echo(f"read {len(rows)} addresses from {file}: {added} newly suppressed")
    typer.echo(f"list: {_where(location)}")


def _read_import(file: Path, column: str, default: Reason) -> list[tuple[str, Reason]]:
    rows: list[tuple[str, Reason]] = []
    problems: list[str] = []
    with _opened(file) as handle:
        reader = csv.DictReader(handle)
        try:
            fields = [f.strip() for f in reader.fieldnames or []]
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{file}: line 1: {exc}") from None
        if column not in fields:
            raise DataError(
                f"{file}: line 1: no column '{column}' (columns: {', '.join(fields) or 'none'});"
                " name it with --column"
            )
        try:
            for record in reader:
                line = reader.line_num
                values = {(k or "").strip(): (v or "").strip() for k, v in record.items()}
                try:
                    email = normalize_address(values.get(column, ""))
                except AddressError as exc:
                    problems.append(f"{file}: line {line}: {exc}")
                    continue
                why = values.get("reason") or default.value
                if why not in Reason.__members__.values():
                    problems.append(f"{file}: line {line}: unknown reason {why!r} ({REASONS})")
                    continue
                rows.append((email, Reason(why)))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{file}: line {reader.line_num}: {exc}") from None
    if problems:
        for problem in problems[:-1]:
            typer.echo(problem, err=True)
        raise DataError(f"{problems[-1]} ({len(problems)} bad rows; nothing imported)")
    return rows


@contextlib.contextmanager
def _opened(file: Path) -> Iterator[TextIO]:
    try:
        handle = open(file, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputFileError(f"cannot read: {exc.strerror}", path=file) from None
    with handle:
        yield handle


def _others(asked: list[str], done: list[str]) -> list[str]:
    return [a for a in asked if a not in set(done)]


def _where(location: Location) -> str:
    return location.target.split("?", 1)[0]


@bounces_app.command("scan")
def bounces_scan(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="A Maildir folder, an mbox file, or imaps://user@host[:port]/FOLDER.",
        ),
    ],
    campaigns: Annotated[
        list[Path] | None,
        typer.Option(
            "--campaign",
            metavar="CAMPAIGN.yaml",
            help="Tie bounces to this campaign's recipients by Message-ID (repeatable); its "
            "list is the one written to, unless --list.",
        ),
    ] = None,
    target: ListOpt = None,
    soft_limit: Annotated[
        int,
        typer.Option(
            "--soft-limit", min=1, help="Soft bounces after which an address is suppressed."
        ),
    ] = SOFT_LIMIT,
    delete: Annotated[
        bool,
        typer.Option("--delete", help="IMAP: delete the bounces and complaints read."),
    ] = False,
    move: Annotated[
        str | None,
        typer.Option(
            "--move", metavar="FOLDER", help="IMAP: move the bounces and complaints read there."
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="IMAP: seconds to wait for the server.")
    ] = 30.0,
    json_: JsonOpt = False,
) -> None:
    """Read bounces (RFC 3464 and older formats) and complaints (RFC 5965); suppress hard
    bounces and complaints, count soft bounces. Replies and auto-replies change nothing; a
    report read before is not counted again. Nothing is deleted unless asked.

    Example: mailcli bounces scan imaps://bounces@mail.acme.example/INBOX --campaign
    campaigns/spring/campaign.yaml
    """
    from mailcli.bounces import (
        ImapFolder,
        LocalMailbox,
        Source,
        campaign_tie,
        imap_password,
        scan,
    )

    if delete and move:
        raise UsageError("give --delete or --move, not both")
    loaded = [load_campaign(c, check_files=False) for c in campaigns or []]
    if target is None and loaded:
        location = for_campaign(loaded[0])
        if location is None:
            raise UsageError(
                f"{campaigns[0] if campaigns else ''}: the campaign turns the suppression list "
                "off (suppression: false); give --list"
            )
    else:
        location = chosen_location(target, None)
    box: Source
    if source.startswith("imaps://") or source.startswith("imap://"):
        box = ImapFolder(source, imap_password, delete=delete, move=move, timeout=timeout)
    else:
        if delete or move:
            raise UsageError("--delete and --move are for an IMAP folder")
        box = LocalMailbox(Path(source).expanduser())
    lst = location.open()
    try:
        report = scan(box, lst, tie=campaign_tie(loaded), soft_limit=soft_limit)
    finally:
        box.close()
        lst.close()
    if json_:
        _emit({**report.to_json(), "list": _where(location)})
        return
    for f in report.findings:
        where = f" ({f.campaign})" if f.campaign else ""
        status = f" {f.status}" if f.status else ""
        typer.echo(f"{f.kind:<9} {f.email}{status}{where}")
    typer.echo(
        f"{report.source}: {_n(report.messages, 'message')}, "
        f"{_n(report.hard, 'hard bounce')}, {report.soft} soft, "
        f"{_n(report.complaints, 'complaint')}, {report.ignored} not reports, "
        f"{report.already_read} read before; {len(report.suppressed)} newly suppressed"
    )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
