"""What the command line shows people: live progress, summaries, previews, status, logs.

A terminal gets Rich (a live progress bar, tables, panels); anything else (cron, CI, a pipe) gets
plain lines without escape codes, a progress line at most every few seconds, and a one-line
summary. `NO_COLOR` turns colour off (Rich reads it); `TERM=dumb` turns the live display off.
Only the CLI imports this module: the library stays free of Rich.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from mailcli.batch import Summary
    from mailcli.preview import Preview
    from mailcli.sequence_status import SequencePlace
    from mailcli.status import RecipientHistory, Status

PLAIN_PROGRESS_EVERY_S = 5.0
LIVE_REFRESH_PER_S = 8


def is_terminal(stream: IO[str]) -> bool:
    """A stream a person watches: a TTY, and not a terminal that cannot move the cursor."""
    return stream.isatty() and os.environ.get("TERM", "") != "dumb"


def console(stream: IO[str] | None = None) -> Console:
    """A Rich console on `stream` (stdout by default); colour follows NO_COLOR and the TTY."""
    stream = stream or sys.stdout
    return Console(file=stream, highlight=False, soft_wrap=True)


# --- logging --------------------------------------------------------------------------------


class _ShortNames(logging.Formatter):
    """`mailcli.batch` shows as `batch`: the logger names are the package's module names."""

    def format(self, record: logging.LogRecord) -> str:
        record.short = record.name.removeprefix("mailcli.")
        return super().format(record)


def setup_logging(*, verbose: bool, debug: bool, log_file: Path | None) -> None:
    """`--verbose` (INFO) and `--debug` (DEBUG, with the SMTP dialogue) on stderr; `--log-file`
    appends the same records, timestamped, to a file (INFO, or DEBUG with --debug)."""
    logger = logging.getLogger("mailcli")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    if verbose or debug:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(_ShortNames("%(short)s: %(message)s"))
        stderr.setLevel(level)
        logger.addHandler(stderr)
    if log_file is not None:
        try:
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            from mailcli.errors import CantCreateError

            raise CantCreateError(
                f"cannot open the log file: {exc.strerror}", path=log_file
            ) from None
        handler.setFormatter(
            _ShortNames(
                "%(asctime)s %(levelname)-7s pid %(process)d %(short)s: %(message)s",
                datefmt="%Y-%m-%dT%H:%M:%S%z",
            )
        )
        handler.setLevel(logging.DEBUG if debug else logging.INFO)
        logger.addHandler(handler)
        level = min(level, handler.level)
    logger.setLevel(level)


# --- batch progress ---------------------------------------------------------------------------


def estimate_rows(path: Path) -> int | None:
    """About how many data rows a CSV file has (line count less the header), for the percentage
    of a dry run; None when the file cannot be counted cheaply."""
    try:
        if path.stat().st_size > 2_000_000_000:
            return None
        count = 0
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                count += chunk.count(b"\n")
    except OSError:
        return None
    return max(count - 1, 0)


class _RateColumn(ProgressColumn):
    """Messages per second since the bar started."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0.5 else 0.0
        return Text(f"{rate:,.1f} msg/s" if rate else "-- msg/s", style="progress.data.speed")


class BatchProgress:
    """The progress callback of `batch` and `--dry-run`.

    In a terminal: a live bar with the percentage, sent / failed / deferred counts, the message
    rate, the elapsed time and the ETA. Elsewhere: a plain line on stderr at most every
    PLAIN_PROGRESS_EVERY_S seconds. Quiet and JSON modes show nothing.
    """

    def __init__(self, *, dry_run: bool, expected_rows: int | None, enabled: bool) -> None:
        self.dry_run = dry_run
        self.expected_rows = expected_rows
        self.enabled = enabled
        self.live = enabled and is_terminal(sys.stderr)
        self._last_plain = time.monotonic()
        self._last_draw = 0.0
        self._started = time.monotonic()
        self._progress: Progress | None = None
        self._task: Any = None
        self._phase = ""
        self._last: Summary | None = None

    @contextmanager
    def running(self) -> Iterator[BatchProgress]:
        """Show the live display for the duration of a run (and take it down after)."""
        if not self.live:
            yield self
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TaskProgressColumn(),
            TextColumn("{task.fields[counts]}"),
            _RateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            # No refresh thread: a dry run forks workers, and a fork must not copy a thread
            # that holds the console's lock. The callback redraws, a few times a second.
            auto_refresh=False,
            transient=False,
        )
        self._task = self._progress.add_task(
            "checking" if not self.dry_run else "building",
            total=self.expected_rows,
            counts="",
        )
        self._progress.start()
        try:
            yield self
        finally:
            if self._last is not None:
                self._draw(self._last)  # the final counts, whatever the throttle skipped
            self._progress.stop()

    def __call__(self, summary: Summary) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        self._last = summary
        if self._progress is not None:
            if now - self._last_draw >= 1 / LIVE_REFRESH_PER_S or self._phase_changed(summary):
                self._last_draw = now
                self._draw(summary)
            return
        if now - self._last_plain >= PLAIN_PROGRESS_EVERY_S:
            self._last_plain = now
            print(self.plain_line(summary, now - self._started), file=sys.stderr, flush=True)

    def _phase_changed(self, summary: Summary) -> bool:
        return summary.phase != self._phase

    def _draw(self, summary: Summary) -> None:
        assert self._progress is not None
        s = summary
        if s.phase != self._phase:
            self._phase = s.phase
            if s.phase == "sending":
                # The bar now counts messages: the due rows found by the check.
                self._progress.reset(
                    self._task, total=s.would_send or None, description="sending", counts=""
                )
        if self.dry_run:
            done = s.total
            counts = f"{s.would_send:,} built · {s.invalid:,} invalid · {s.duplicates:,} dup"
            total = max(self.expected_rows or 0, s.total) or None
        elif s.phase == "sending":
            done = s.sent + s.failed + s.deferred + s.unknown
            counts = (
                f"[green]{s.sent:,} sent[/] · [red]{s.failed:,} failed[/] · "
                f"[yellow]{s.deferred:,} deferred[/]"
            )
            total = s.would_send or None
        else:
            done = s.total
            counts = f"{s.total:,} rows read · {s.invalid:,} invalid"
            total = max(self.expected_rows or 0, s.total) or None
        self._progress.update(self._task, completed=done, total=total, counts=counts)
        self._progress.refresh()

    def plain_line(self, summary: Summary, elapsed: float) -> str:
        """One progress line for logs: counts, percentage, rate, elapsed, ETA."""
        s = summary
        if s.dry_run or s.phase != "sending":
            done, total = s.total, self.expected_rows
            what = f"{s.total:,} rows read, {s.would_send:,} {'built' if s.dry_run else 'due'}"
            what += f", {s.invalid:,} invalid"
        else:
            done, total = s.sent + s.failed + s.deferred + s.unknown, s.would_send
            what = f"{s.sent:,} sent, {s.failed:,} failed, {s.deferred:,} deferred"
        rate = done / elapsed if elapsed > 0 else 0.0
        line = f"progress: {what}"
        if total:
            line += f" ({min(done / total, 1.0):.0%} of {total:,})"
        line += f", {rate:,.1f}/s, elapsed {_duration(elapsed)}"
        if total and rate > 0 and done < total:
            line += f", ETA {_duration((total - done) / rate)}"
        return line


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def summary_table(summary: Summary) -> Table:
    """The end-of-run table for a terminal."""
    s = summary
    title = f"Dry run of '{s.campaign}'" if s.dry_run else f"Campaign '{s.campaign}'"
    table = Table(title=title, show_header=False, title_justify="left", min_width=40)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    rows: list[tuple[str, str]] = [("rows read", f"{s.total:,}")]
    if s.dry_run:
        rows += [("messages built", f"{s.would_send:,}"), ("bytes", f"{s.bytes:,}")]
        rows += [("suppressed", f"{s.suppressed:,}")] if s.suppressed else []
    else:
        rows += [
            ("[green]sent[/]", f"{s.sent:,}"),
            ("[red]failed[/]", f"{s.failed:,}"),
            ("[yellow]deferred[/]", f"{s.deferred:,}"),
            ("unknown", f"{s.unknown:,}"),
            (
                "nothing due now" if s.steps is not None else "done in earlier runs",
                f"{s.skipped:,}",
            ),
            ("suppressed", f"{s.suppressed:,}"),
            ("left for the next run", f"{s.pending:,}"),
            ("connections", f"{s.connections:,}"),
        ]
    rows += [(f"step {name}", text) for name, text in s.step_lines()]
    rows += [
        ("invalid rows", f"{s.invalid:,}"),
        ("duplicates", f"{s.duplicates:,}"),
        ("elapsed", f"{s.elapsed_s:.2f} s"),
        ("rate", f"{s.rate_per_s:,.1f} msg/s"),
        ("exit code", str(s.exit_code)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


# --- preview --------------------------------------------------------------------------------

SHOWN_HEADERS = ("From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID")


def preview_view(shown: Preview) -> Group:
    """A message for a terminal: a headers panel, the text body, a summary of the HTML part."""
    parsed = shown.parsed
    headers = Table.grid(padding=(0, 1))
    headers.add_column(style="bold cyan", no_wrap=True)
    headers.add_column()
    for name in SHOWN_HEADERS:
        if parsed[name] is not None:
            headers.add_row(f"{name}:", str(parsed[name]))
    for name, value in parsed.items():
        if name not in SHOWN_HEADERS and not name.lower().startswith(("content-", "mime-")):
            headers.add_row(f"{name}:", str(value))
    for name, ctype, size in shown.attachments():
        headers.add_row("Attachment:", f"{name} ({ctype}, {size:,} bytes)")
    parts = ", ".join(p.get_content_type() for p in parsed.walk())
    headers.add_row("Parts:", parts)
    blocks: list[Any] = [
        Panel(
            headers,
            title=f"row {shown.row}: {shown.email}"
            + (f", step {shown.step}" if shown.step else ""),
            title_align="left",
        ),
        Panel(
            Text(shown.text() or "(no text part)"),
            title="text/plain",
            title_align="left",
            border_style="dim",
        ),
    ]
    html = shown.html()
    if html is not None:
        blocks.append(
            Panel(
                Text(html_summary(html)), title="text/html", title_align="left", border_style="dim"
            )
        )
    blocks.append(Text(f"{len(shown.built.data):,} bytes; --format raw shows them", style="dim"))
    return Group(*blocks)


def html_summary(html: str) -> str:
    """What an HTML part holds, in a few lines: size, title, links and images."""
    import re

    title = re.search(r"<title[^>]*>(.*?)</title>", html, re.I | re.S)
    links = re.findall(r"<a\s[^>]*href=\"([^\"]+)\"", html, re.I)
    images = re.findall(r"<img\s[^>]*src=\"([^\"]+)\"", html, re.I)
    lines = [f"{len(html):,} characters"]
    if title and title.group(1).strip():
        lines.append(f"title: {title.group(1).strip()}")
    lines.append(f"{len(links)} links" + (": " + ", ".join(links[:5]) if links else ""))
    if len(links) > 5:
        lines[-1] += ", ..."
    lines.append(f"{len(images)} images" + (": " + ", ".join(images[:5]) if images else ""))
    lines.append("--format html prints it; --out DIR writes it to open in a browser")
    return "\n".join(lines)


# --- status ---------------------------------------------------------------------------------

STATUS_STYLES = {
    "sent": "green",
    "failed": "red",
    "deferred": "yellow",
    "unknown": "magenta",
    "pending": "",
    "suppressed": "dim",
}


def history_view(history: RecipientHistory, *, terminal: bool) -> Group:
    """One recipient (`status --recipient`): where it stands, then each try as a table."""
    r = history.record
    where = f", row {r.row}" if r.row is not None else ""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    answer = " ".join(str(part) for part in (r.code, r.reply) if part)
    facts.add_row(
        "status",
        Text.assemble((r.status.value, STATUS_STYLES.get(r.status.value, "")), f"  {answer}"),
    )
    facts.add_row("Message-ID", r.message_id or "-")
    # A state file of schema 1 recorded tries without their time.
    facts.add_row("first try", r.first_at or ("not recorded" if r.tries else "-"))
    facts.add_row("last try", r.last_at or "-")
    facts.add_row("tries", f"{r.tries}" + (f" (the last in run {r.run})" if r.run else ""))
    blocks: list[Any] = [Text(f"{r.email} in campaign '{history.campaign}'{where}"), facts]
    if history.suppressed:
        blocks.append(Text("On the suppression list: not sent while it stays there."))
    elif not r.tries and r.status.value == "pending":
        blocks.append(Text("Not tried yet: the next `mailcli batch` sends it."))
    if history.attempts:
        table = Table(
            title=f"Tries: {len(history.attempts)}",
            title_justify="left",
            box=box.HEAVY_HEAD if terminal else box.ASCII,
        )
        for column in ("run", "time", "outcome", "code"):
            table.add_column(
                column, justify="right" if column in ("run", "code") else "left", no_wrap=True
            )
        table.add_column("reply", overflow="fold")  # a log: wrapped, never cut short
        for a in history.attempts:
            table.add_row(
                str(a.run or ""),
                a.at,
                Text(a.status.value, style=STATUS_STYLES.get(a.status.value, "")),
                str(a.code or ""),
                a.reply or "",
            )
        blocks.append(table)
    if r.tries > len(history.attempts):
        untold = r.tries - len(history.attempts)
        blocks.append(
            Text(
                f"({untold} earlier {'try is' if untold == 1 else 'tries are'} not listed: made "
                "before the state kept a log of tries)",
                style="dim",
            )
        )
    return Group(*blocks)


def sequence_view(place: SequencePlace, *, terminal: bool) -> Group:
    """One recipient of a sequence (`status --recipient`): each step, then what comes next."""
    where = f", row {place.row}" if place.row is not None else ""
    blocks: list[Any] = [Text(f"{place.email} in sequence '{place.campaign}'{where}")]
    table = Table(box=box.HEAVY_HEAD if terminal else box.ASCII)
    for column in ("step", "status", "time", "code"):
        table.add_column(column, justify="right" if column == "code" else "left", no_wrap=True)
    table.add_column("reply", overflow="fold")
    for p in place.steps:
        r = p.record
        table.add_row(
            p.step,
            Text(p.status, style=STATUS_STYLES.get(p.status, "")),
            (r.last_at or "") if r is not None else "",
            str(r.code or "") if r is not None else "",
            (r.reply or "") if r is not None else "",
        )
    blocks.append(table)
    if not place.in_list:
        blocks.append(Text("No longer in the list: gets no further step."))
    elif place.suppressed:
        blocks.append(Text("On the suppression list: gets no further step while it stays there."))
    elif place.problem is not None:
        blocks.append(Text(f"Its row cannot be scheduled: {place.problem}"))
    elif place.next_action == "done":
        blocks.append(Text("Done: no step is left for this recipient."))
    elif place.next_action == "stopped":
        blocks.append(
            Text(
                f"Stopped: step '{place.next_step}' was refused, so no later step goes out "
                "(`batch --resend-failed` sends it again once the cause is fixed)."
            )
        )
    elif place.next_step is not None:
        when = place.next_at.isoformat(timespec="minutes") if place.next_at else ""
        text = {
            "due": f"Next: step '{place.next_step}', due now (the next run sends it)",
            "waiting": f"Next: step '{place.next_step}', due at {when}",
            "held": f"Next: step '{place.next_step}', due, waiting for the window at {when}",
        }[place.next_action or "due"]
        blocks.append(Text(text))
    return Group(*blocks)


def _steps_table(report: Status, frame: box.Box) -> Table:
    table = Table(title="By step", title_justify="left", box=frame)
    table.add_column("step")
    keys = ("sent", "pending", "skipped", "failed", "deferred", "unknown")
    for key in keys:
        table.add_column(key, justify="right")
    for name, counts in (report.steps or {}).items():
        table.add_row(name, *(f"{counts.get(k, 0):,}" for k in keys))
    return table


def status_view(report: Status, *, with_recipients: bool, terminal: bool) -> Group:
    """Counts per status as a table, the last run, and the recipients not delivered.

    Off a terminal the tables are drawn in ASCII, for logs and mail that cron sends.
    """
    frame = box.HEAVY_HEAD if terminal else box.ASCII
    counts = report.to_json(with_recipients=False)
    table = Table(title=f"Campaign '{report.campaign}'", title_justify="left", box=frame)
    table.add_column("status")
    # A sequence counts messages: one per recipient and step.
    table.add_column("messages" if report.steps is not None else "recipients", justify="right")
    table.add_column("share", justify="right")
    total = counts["total"] or 1
    shown = ("sent", "pending", "failed", "deferred", "unknown")
    for key in (*shown, "suppressed") if counts["suppressed"] else shown:
        style = STATUS_STYLES[key]
        table.add_row(Text(key, style=style), f"{counts[key]:,}", f"{counts[key] / total:.1%}")
    table.add_section()
    table.add_row(Text("total", style="bold"), f"{counts['total']:,}", "")
    if report.invalid_rows:
        table.add_row("invalid rows", f"{report.invalid_rows:,}", "not counted")
    blocks: list[Any] = [table]
    if report.steps is not None:
        blocks.append(_steps_table(report, frame))
    blocks.append(Text(f"state: {report.state_file}", style="dim"))
    run = report.last_run
    if run:
        ended = (
            f"finished {run.finished}, exit {run.exit_code}"
            if run.finished
            else "still running, or stopped without finishing"
        )
        blocks.append(
            Text(f"Last run: started {run.started} (pid {run.pid} on {run.host}), {ended}")
        )
    else:
        blocks.append(Text("No run yet."))
    if report.hosts:
        hosts = Table(title="By host", title_justify="left", box=frame)
        for column in ("host", "sent", "failed", "deferred", "unknown"):
            hosts.add_column(column, justify="left" if column == "host" else "right")
        for h in report.hosts:
            hosts.add_row(h.host, *(f"{n:,}" for n in (h.sent, h.failed, h.deferred, h.unknown)))
        blocks.append(hosts)
    for live in report.live_runs:
        blocks.append(Text(f"Sending now: pid {live.pid} on {live.host}, since {live.started}"))
    if report.fingerprints:
        blocks.append(_fingerprint_table(report, frame))
    if with_recipients:
        failures = Table(
            title=f"Not delivered: {len(report.recipients)}", title_justify="left", box=frame
        )
        steps = report.steps is not None
        columns = ("row", "email", "step", "status", "code", "reply")
        for column in columns if steps else [c for c in columns if c != "step"]:
            failures.add_column(column, justify="right" if column in ("row", "code") else "left")
        for r in report.recipients:
            cells: list[Any] = (
                [str(r.row), r.email, r.step or ""] if steps else [str(r.row), r.email]
            )
            failures.add_row(
                *cells,
                Text(r.status.value, style=STATUS_STYLES.get(r.status.value, "")),
                str(r.code or ""),
                r.reply or "",
            )
        blocks.append(failures if report.recipients else Text("Not delivered: none"))
    elif any(counts[k] for k in ("failed", "deferred", "unknown")):
        blocks.append(Text("(--failed lists the recipients not delivered)", style="dim"))
    return Group(*blocks)


FINGERPRINTS_SHOWN = 5


def _fingerprint_table(report: Status, frame: box.Box) -> Table:
    """The campaign's fingerprint history, the latest entries: when, which file, what changed."""
    entries = report.fingerprints
    earlier = len(entries) - FINGERPRINTS_SHOWN
    table = Table(
        title="Campaign history (fingerprint)",
        caption=f"{earlier} earlier: --json lists them all" if earlier > 0 else None,
        title_justify="left",
        caption_justify="left",
        box=frame,
    )
    shared = report.hosts is not None
    for column in ("recorded", "file", *(("host",) if shared else ()), "what changed"):
        table.add_column(column, overflow="fold")  # a path is never cut short
    for entry in entries[-FINGERPRINTS_SHOWN:]:
        host = (entry.fingerprint.host,) if shared else ()
        table.add_row(
            entry.recorded, entry.fingerprint.file, *host, ", ".join(entry.changes) or "-"
        )
    return table
