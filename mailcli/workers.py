"""Rendering and building rows on several cores, for `batch --dry-run`.

Reading, validating and de-duplicating stay in the calling process, in list order, so a row's
fate does not depend on the number of workers. Rows are sent to the workers in chunks of plain
tuples (pickling a tuple is ten times cheaper than a dataclass), at most a few chunks per worker
in flight, so memory stays bounded however long the list. Results come back in submission order.

Where the platform has `fork` (Linux, the BSDs), the workers are forked after the campaign is
loaded: templates are compiled and static attachments encoded once, before the fork. Elsewhere
(Windows has no fork; on macOS it is unsafe and not Python's default) they are spawned: each
worker starts a fresh interpreter and rebuilds the pipeline from the campaign's data, which is
passed to it pickled. The environment variable `MAILCLI_START_METHOD` (`fork`, `spawn` or
`forkserver`) chooses the start method instead, e.g. to check under spawn on Linux what
Windows and macOS users get. (Under spawn, as multiprocessing requires, a program that calls
this module must guard its entry point with `if __name__ == "__main__":`; `mailcli` does.)
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, TypeAlias

from mailcli.addresses import AddressError, Mailbox, parse_mailbox
from mailcli.campaign import Campaign
from mailcli.errors import ConfigError, MailcliError
from mailcli.pipeline import Item, Pipeline, Ready
from mailcli.recipients import Recipient, RowProblem

CHUNK = 256
IN_FLIGHT_PER_WORKER = 4
# Below this size a list is checked in-process: starting workers costs more than it saves.
PARALLEL_MIN_BYTES = 512 * 1024

START_METHOD_ENV = "MAILCLI_START_METHOD"
START_METHODS = ("fork", "spawn", "forkserver")

Row: TypeAlias = tuple[int, int, str, str, dict[str, str]]
# A worker's answer for one row: the message size, or the problem that stopped it.
Outcome: TypeAlias = "int | str"

_pipeline: Pipeline | None = None
# An error met while a spawned worker rebuilt the pipeline; raised by its first task, so that it
# reaches the parent whole (an initializer that raises only breaks the pool).
_start_error: MailcliError | None = None


class PipelineRecipe(NamedTuple):
    """What a spawned worker rebuilds the parent's pipeline from: picklable, and exact.

    The campaign's own fields rather than its file, so a campaign changed after loading (or
    never loaded from a file) is checked as it is, and an edit of the file meanwhile is not seen.
    """

    campaign: dict[str, Any]
    proxies: frozenset[str]  # the fields that are read-only mappings (they do not pickle)
    sender: str

    @classmethod
    def of(cls, pipeline: Pipeline) -> PipelineRecipe:
        """The recipe of a built pipeline."""
        fields: dict[str, Any] = {}
        proxies: set[str] = set()
        for f in dataclasses.fields(pipeline.campaign):
            value = getattr(pipeline.campaign, f.name)
            if isinstance(value, MappingProxyType):
                value = dict(value)
                proxies.add(f.name)
            fields[f.name] = value
        return cls(fields, frozenset(proxies), _sender_text(pipeline.sender))

    def build(self) -> Pipeline:
        """The pipeline again, in this process."""
        fields: dict[str, Any] = {
            name: MappingProxyType(value) if name in self.proxies else value
            for name, value in self.campaign.items()
        }
        return Pipeline(Campaign(**fields), sender=self.sender)


def _sender_text(sender: Mailbox) -> str:
    """The sender as text that `parse_mailbox` reads back as the same mailbox.

    Not `str(sender)`: formataddr encodes a non-ASCII name as RFC 2047, which stays encoded when
    parsed again.
    """
    if not sender.name:
        return sender.addr
    name = sender.name.replace("\\", "\\\\").replace('"', '\\"')
    text = f'"{name}" <{sender.addr}>'
    try:
        same = parse_mailbox(text) == sender
    except AddressError:
        same = False
    if not same:  # not known to happen; but a worker must not build mail from another sender
        raise MailcliError(
            f"the sender {str(sender)!r} cannot be passed to a worker process",
            hint=f"run with --jobs 1, or set {START_METHOD_ENV}=fork where the system has fork",
        )
    return text


def available_cores() -> int:
    """The number of cores this process may run on."""
    # The affinity mask (Linux, some BSDs) is what a container or `taskset` allows, often fewer
    # than the machine has; elsewhere Python 3.13's process_cpu_count (which also honours
    # PYTHON_CPU_COUNT), else the machine's count.
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        return max(1, len(affinity(0)))
    count = getattr(os, "process_cpu_count", os.cpu_count)()
    return max(1, int(count or 1))


def start_method() -> str:
    """How worker processes start: $MAILCLI_START_METHOD, else fork where it is safe, else spawn."""
    available = multiprocessing.get_all_start_methods()
    wanted = os.environ.get(START_METHOD_ENV, "").strip().lower()
    if wanted:
        if wanted not in START_METHODS:
            raise ConfigError(
                f"{START_METHOD_ENV}={wanted!r}: must be one of {', '.join(START_METHODS)}"
            )
        if wanted not in available:
            raise ConfigError(
                f"{START_METHOD_ENV}={wanted!r}: this system has only {', '.join(available)}"
            )
        return wanted
    # macOS lists fork, but its system libraries may hang or crash in a forked child; Python
    # itself has defaulted to spawn there since 3.8.
    if "fork" in available and sys.platform != "darwin":
        return "fork"
    return "spawn"


def default_jobs(recipients: Path) -> int:
    """Worker count when none is asked for: every core for a big list, none for a small one."""
    try:
        size = recipients.stat().st_size
    except OSError:
        return 1
    if size < PARALLEL_MIN_BYTES:
        return 1
    return min(available_cores(), 8)


def checked(pipeline: Pipeline, jobs: int) -> Iterator[tuple[Item, int | RowProblem | None]]:
    """Every row of the list in order, with each valid row's size or problem from a worker.

    Duplicates and rows that fail validation come back with None: they never reach a worker.
    """
    global _pipeline
    method = start_method()
    # A forked worker inherits `_pipeline` as it is; any other starts empty and builds its own.
    recipe = None if method == "fork" else PipelineRecipe.of(pipeline)
    _pipeline = pipeline
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_start_worker, initargs=(recipe,)
    ) as pool:
        pending: deque[tuple[list[Item], Future[list[Outcome]]]] = deque()
        try:
            for chunk in _chunks(pipeline.items(render=False)):
                rows = [_as_row(item.recipient) for item in chunk if isinstance(item, Ready)]
                pending.append((chunk, pool.submit(_check, rows)))
                if len(pending) >= jobs * IN_FLIGHT_PER_WORKER:
                    yield from _collect(*pending.popleft())
            while pending:
                yield from _collect(*pending.popleft())
        except BrokenProcessPool:  # from submit() or result(), whichever notices first
            raise MailcliError(
                "a worker process died (out of memory, or killed)",
                hint="run again with --jobs 1 to check the rows in one process",
            ) from None
        finally:
            _pipeline = None
            pool.shutdown(wait=True, cancel_futures=True)


def _chunks(items: Iterable[Item]) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _collect(
    chunk: list[Item], future: Future[list[Outcome]]
) -> Iterator[tuple[Item, int | RowProblem | None]]:
    outcomes = iter(future.result())
    for item in chunk:
        if not isinstance(item, Ready):
            yield item, None
            continue
        outcome = next(outcomes)
        if isinstance(outcome, str):
            r = item.recipient
            yield item, RowProblem(r.row, r.line, outcome, r.email)
        else:
            yield item, outcome


def _as_row(recipient: Recipient) -> Row:
    box = recipient.mailbox
    return (recipient.row, recipient.line, box.name, box.addr, dict(recipient.fields))


def _start_worker(recipe: PipelineRecipe | None) -> None:
    global _pipeline, _start_error
    # Ctrl-C reaches the whole process group; the parent decides, and shuts the workers down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if recipe is not None:
        try:
            _pipeline = recipe.build()
        except MailcliError as exc:  # e.g. a template deleted since the parent loaded it
            _start_error = exc
            return
    assert _pipeline is not None
    # Message-IDs and boundaries carry the process id and a random prefix: a forked copy of the
    # parent's builder would repeat the parent's.
    _pipeline.builder.reseed()


def _check(rows: list[Row]) -> list[Outcome]:
    if _start_error is not None:
        raise _start_error
    pipeline = _pipeline
    assert pipeline is not None, "worker started without a pipeline"
    outcomes: list[Outcome] = []
    for row, line, name, addr, fields in rows:
        checked = pipeline.check_recipient(Recipient(row, line, Mailbox(name, addr), fields))
        outcomes.append(checked.problem if isinstance(checked, RowProblem) else len(checked.data))
    return outcomes
