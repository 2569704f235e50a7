"""The campaign's fingerprint: what its message is made of and which file it came from.

A campaign's state is found by its `name` (the default state is `.mailcli/<name>.sqlite` beside
the campaign file). Copying campaign.yaml to start a new campaign and keeping the name makes the
copy share the old campaign's state: everyone who got the old message would count as done in an
earlier run and never get the new one. So the state keeps a fingerprint of the campaign (the
sender, the subject, the text / HTML / Markdown templates, the attachments' names, and the
campaign file's path), and every real run compares its own with the last one recorded, before
anything is sent:

- none recorded yet: it is recorded;
- the same content from the same file: nothing to do;
- the same content from another file: the folder was moved or copied; the new path is recorded,
  with a one-line note;
- other content from the same file (a fixed typo, a drip campaign's edited template): recorded,
  with a one-line note saying what changed;
- other content from another file that is still there: two campaign files share one state;
  refused (ConfigError, exit 78), naming both files. (When the recorded file is gone, the
  campaign was moved and edited: recorded, with a note.)

With a PostgreSQL state, hosts share a campaign by its name from their own copies of the folder,
each at its own path, so the path never makes a difference: the same content from any host and
any path is the same campaign, and nothing is recorded for it. Other content is taken as an edit
only from the host and the file that recorded the last fingerprint (or from that host when that
file is gone there); from anywhere else it is refused, because another host cannot tell an edit
from a copy.

Everything here but `check` is pure (`compute` reads the campaign's template files); the stores
keep the history (`fingerprints`, `add_fingerprint`), and the batch engine calls `check` once the
store is open.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mailcli.errors import ConfigError, TempFailError, open_error

if TYPE_CHECKING:
    from mailcli.campaign import Campaign

__all__ = [
    "PARTS",
    "Fingerprint",
    "History",
    "Recorded",
    "Snapshot",
    "Verdict",
    "check",
    "compute",
    "describe",
    "judge",
    "with_sender_of",
]

log = logging.getLogger(__name__)

# The parts whose text is hashed, in the order they are named, with how a note names them.
PARTS: Mapping[str, str] = {
    "from": "from",
    "subject": "subject",
    "text": "text template",
    "html": "HTML template",
    "markdown": "Markdown template",
}
FIRST_RUN = "first recorded"


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A campaign's message (hashes of its parts, the attachments' names) and where it is from."""

    file: str  # the campaign file, an absolute path
    host: str  # the machine that read it
    parts: Mapping[str, str | None] = field(hash=False)  # part -> SHA-256 of its text; None: none
    attachments: tuple[str, ...] = ()  # the names as the campaign file writes them
    # A sequence's steps: name -> SHA-256 of what the step is (its offset, condition, subject,
    # templates and attachments), in the campaign's order.
    steps: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def digest(self) -> str:
        """One hash of the content, file and host left out: equal digests, the same message."""
        return _hash(json.dumps(self.content(), sort_keys=True).encode("utf-8"))

    def content(self) -> dict[str, Any]:
        """The content as a JSON object: what a store keeps beside the file and the host."""
        content: dict[str, Any] = {
            "parts": {k: self.parts.get(k) for k in PARTS},
            "attachments": sorted(self.attachments),
        }
        if self.steps:  # (absent for a one-message campaign: its digest is what it was)
            content["steps"] = dict(self.steps)
        return content

    @classmethod
    def stored(cls, file: str, host: str, content: Mapping[str, Any] | str) -> Fingerprint:
        """A fingerprint as a store kept it (`content` as a JSON object, or its text)."""
        data = json.loads(content) if isinstance(content, str) else content
        parts = data.get("parts") or {}
        return cls(
            file,
            host,
            {k: parts.get(k) for k in PARTS},
            tuple(sorted(data.get("attachments") or ())),
            dict(data.get("steps") or {}),
        )


@dataclass(frozen=True, slots=True)
class Recorded:
    """One entry of a campaign's fingerprint history."""

    id: int
    recorded: str  # when, ISO 8601 in UTC
    fingerprint: Fingerprint
    changes: tuple[str, ...]  # what changed since the entry before ("first recorded" for the first)


class History(Protocol):
    """Where a campaign's fingerprints are kept: its state store."""

    def fingerprints(self) -> list[Recorded]:
        """Every fingerprint recorded, oldest first."""
        ...

    def add_fingerprint(
        self, fingerprint: Fingerprint, changes: Sequence[str], *, after: int | None
    ) -> bool:
        """Record a fingerprint, unless one was recorded since the entry `after` (None: none
        yet), which another run has then done first: False, and nothing recorded."""
        ...


class Snapshot:
    """A history that records nothing (a dry run compares but never writes the state)."""

    def __init__(self, entries: Sequence[Recorded]) -> None:
        self.entries = list(entries)

    def fingerprints(self) -> list[Recorded]:
        """The entries it was made with."""
        return list(self.entries)

    def add_fingerprint(
        self, fingerprint: Fingerprint, changes: Sequence[str], *, after: int | None
    ) -> bool:
        """Records nothing; says it did, so that the caller goes on as a real run would."""
        return True


class Verdict(StrEnum):
    """What a run makes of its fingerprint against the last one recorded."""

    FIRST = "first"  # none recorded yet: record it
    SAME = "same"  # nothing to do
    MOVED = "moved"  # the same content from another file: record the new path
    EDITED = "edited"  # other content from the same file (or from where it moved): record
    CLASH = "clash"  # other content from another campaign file: refuse


def compute(
    campaign: Campaign, *, sender: str | None = None, host: str | None = None
) -> Fingerprint:
    """The fingerprint of a campaign; `sender` is the From a run uses when the campaign has
    none (a profile's)."""
    parts: dict[str, str | None] = {
        "from": _hash((campaign.sender or sender or "").encode("utf-8")),
        "subject": _hash(campaign.subject.encode("utf-8")),
    }
    for key, path in (
        ("text", campaign.text),
        ("html", campaign.html),
        ("markdown", campaign.markdown),
    ):
        parts[key] = None if path is None else _hash(_read(path))
    return Fingerprint(
        str(campaign.path.resolve()),
        host if host is not None else socket.gethostname(),
        parts,
        tuple(sorted({a.source for a in campaign.attachments})),
        {step.name: _step_hash(step) for step in campaign.steps},
    )


def _step_hash(step: Any) -> str:
    """One hash of everything a step of a sequence is made of."""
    what = {
        "after": str(step.after),
        "if": step.condition,
        "subject": step.subject,
        "bodies": {
            key: None if path is None else _hash(_read(path))
            for key, path in (("text", step.text), ("html", step.html), ("md", step.markdown))
        },
        "attachments": sorted(a.source for a in step.attachments or ()),
        "headers": dict(step.headers) if step.headers is not None else None,
    }
    return _hash(json.dumps(what, sort_keys=True).encode("utf-8"))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise open_error(path, exc, "template") from None


def describe(before: Fingerprint, after: Fingerprint) -> list[str]:
    """What differs in content, one phrase each: `subject changed`, `text template added`,
    `attachments changed: +a.pdf -b.pdf`."""
    what: list[str] = []
    for key, label in PARTS.items():
        old, new = before.parts.get(key), after.parts.get(key)
        if old == new:
            continue
        verb = "added" if old is None else "removed" if new is None else "changed"
        what.append(f"{label} {verb}")
    if set(before.attachments) != set(after.attachments):
        added = [f"+{name}" for name in after.attachments if name not in before.attachments]
        gone = [f"-{name}" for name in before.attachments if name not in after.attachments]
        what.append("attachments changed: " + " ".join(added + gone))
    for name in after.steps:
        if name not in before.steps:
            what.append(f"step {name!r} added")
        elif before.steps[name] != after.steps[name]:
            what.append(f"step {name!r} changed")
    what.extend(f"step {name!r} removed" for name in before.steps if name not in after.steps)
    return what


def judge(
    last: Fingerprint | None, current: Fingerprint, *, shared: bool, last_file_gone: bool
) -> Verdict:
    """The verdict on `current` against the `last` one recorded.

    `shared`: a PostgreSQL state (the path tells nothing; the host and the file do only for an
    edit). `last_file_gone`: this machine can see that the last fingerprint's file is no longer
    there (the campaign was moved).
    """
    if last is None:
        return Verdict.FIRST
    same_file = last.file == current.file and (not shared or last.host == current.host)
    if last.digest == current.digest:
        return Verdict.SAME if shared or same_file else Verdict.MOVED
    if same_file or last_file_gone:
        return Verdict.EDITED
    return Verdict.CLASH


def check(
    history: History, current: Fingerprint, *, campaign: str, shared: bool, record: bool = True
) -> Verdict:
    """Compare `current` with the last fingerprint recorded and record it when it is new.

    Raises ConfigError (exit 78) when another campaign file with the same name made the state;
    logs a one-line note when the campaign moved or changed. `record=False` (a dry run) never
    records. Runs that record at the same moment (hosts sharing a PostgreSQL state) settle it
    between them: whoever records second compares again with what the first recorded.
    """
    for _ in range(5):
        past = history.fingerprints()
        last = past[-1] if past else None
        previous = last.fingerprint if last is not None else None
        gone = previous is not None and _gone_here(previous, current, shared=shared)
        verdict = judge(previous, current, shared=shared, last_file_gone=gone)
        if verdict is Verdict.SAME:
            return verdict
        if verdict is Verdict.CLASH:
            assert previous is not None
            raise ConfigError(_refusal(campaign, previous, current, shared=shared))
        changes = [FIRST_RUN] if previous is None else _changes(previous, current)
        after = last.id if last is not None else None
        if not record or history.add_fingerprint(current, changes, after=after):
            if previous is None:
                log.info("campaign %r: fingerprint recorded (%s)", campaign, current.digest[:12])
            else:
                log.warning("%s", _note(campaign, previous, current, verdict, gone))
            return verdict
    raise TempFailError(
        f"campaign '{campaign}': its fingerprint kept changing under this run (other runs "
        "recording theirs at the same time)",
        hint="run it again",
    )


def _gone_here(previous: Fingerprint, current: Fingerprint, *, shared: bool) -> bool:
    """The last fingerprint's file is known to be gone: only this machine's files can be seen."""
    if previous.file == current.file or (shared and previous.host != current.host):
        return False
    return not Path(previous.file).exists()


def _changes(previous: Fingerprint, current: Fingerprint) -> list[str]:
    moved = [f"moved from {previous.file}"] if previous.file != current.file else []
    return moved + describe(previous, current)


def _note(
    campaign: str, previous: Fingerprint, current: Fingerprint, verdict: Verdict, gone: bool
) -> str:
    """The one line a run shows when the campaign moved or changed."""
    what = ", ".join(describe(previous, current))
    if previous.file == current.file:
        return f"campaign '{campaign}' ({current.file}): {what} since its last run"
    before = f"{previous.file}, no longer there" if gone else previous.file
    if verdict is Verdict.MOVED:
        return (
            f"campaign '{campaign}' now runs from {current.file} (before: {before}; same content)"
        )
    return f"campaign '{campaign}' now runs from {current.file} (before: {before}): {what}"


def _refusal(campaign: str, previous: Fingerprint, current: Fingerprint, *, shared: bool) -> str:
    """The one line of a refused run: both files, what differs, and what to do."""
    what = ", ".join(describe(previous, current))
    if not shared:
        return (
            f"{current.file}: the state of campaign '{campaign}' was made by another campaign "
            f"file with the same name and other content, {previous.file} ({what}); give this "
            "campaign its own `name:` (or its own `state:`); nothing was sent"
        )
    return (
        f"{current.file}: campaign '{campaign}' in the shared state was last run from "
        f"{previous.file} on {previous.host} with other content ({what}); give this campaign "
        f"its own `name:` (or its own `state:`), or, if it is an edit of that campaign, run it "
        f"from {previous.file} on {previous.host} first; nothing was sent"
    )


def with_sender_of(current: Fingerprint, entries: Sequence[Recorded]) -> Fingerprint:
    """`current` with the last recorded From: a dry run that does not know the From a real run
    takes from its profile must not report it as changed."""
    if not entries:
        return current
    return replace(
        current, parts={**current.parts, "from": entries[-1].fingerprint.parts.get("from")}
    )
