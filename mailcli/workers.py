"""Rendering and building rows on several cores, for `batch --dry-run`.

Reading, validating and de-duplicating stay in the calling process, in list order, so a row's
fate does not depend on the number of workers. Rows are sent to the workers in chunks of plain
tuples (pickling a tuple is ten times cheaper than a dataclass), at most a few chunks per worker
in flight, so memory stays bounded however long the list. The workers are forked after the
campaign is loaded: templates are compiled and static attachments encoded once, before the fork.
Results come back in submission order.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TypeAlias

from mailcli.addresses import Mailbox
from mailcli.errors import MailcliError
from mailcli.pipeline import Item, Pipeline, Ready
from mailcli.recipients import Recipient, RowProblem

CHUNK = 256
IN_FLIGHT_PER_WORKER = 4
# Below this size a list is checked in-process: forking costs more than it saves.
PARALLEL_MIN_BYTES = 512 * 1024

Row: TypeAlias = tuple[int, int, str, str, dict[str, str]]
# A worker's answer for one row: the message size, or the problem that stopped it.
Outcome: TypeAlias = "int | str"

_pipeline: Pipeline | None = None


def default_jobs(recipients: Path) -> int:
    """Worker count when none is asked for: every core for a big list, none for a small one."""
    try:
        size = recipients.stat().st_size
    except OSError:
        return 1
    if size < PARALLEL_MIN_BYTES:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def checked(pipeline: Pipeline, jobs: int) -> Iterator[tuple[Item, int | RowProblem | None]]:
    """Every row of the list in order, with each valid row's size or problem from a worker.

    Duplicates and rows that fail validation come back with None: they never reach a worker.
    """
    global _pipeline
    _pipeline = pipeline
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker) as pool:
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


def _start_worker() -> None:
    # Ctrl-C reaches the whole process group; the parent decides, and shuts the workers down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    assert _pipeline is not None
    _pipeline.builder.reseed()


def _check(rows: list[Row]) -> list[Outcome]:
    pipeline = _pipeline
    assert pipeline is not None, "worker started without a pipeline"
    outcomes: list[Outcome] = []
    for row, line, name, addr, fields in rows:
        checked = pipeline.check_recipient(Recipient(row, line, Mailbox(name, addr), fields))
        outcomes.append(checked.problem if isinstance(checked, RowProblem) else len(checked.data))
    return outcomes
