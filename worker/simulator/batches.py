"""The simulator's batch store: the batches the three batch APIs took (batch_wire.py speaks their wires),
their lines, where each batch is by time, and the files OpenAI's batches read and write, all in memory.

A batch runs from its creation until its model's `batch_latency_s` (times the config's latency_scale) has
passed, with no results; then it ends, and each line is decided at once: expired for the model's
`batch_expiry_share`, errored (a server error) for its `batch_error_share`, by a draw seeded with the
simulator's seed, the batch's number and the line's custom id (so a line sent again in a new batch draws
anew), else answered as the same request would be answered synchronously. A batch cancelled before it
ended ends at once with every line cancelled (lines are answered only as the batch ends).
"""

from __future__ import annotations

import hashlib
import itertools
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from worker.simulator.requests import Call

Outcome = Literal["pending", "answered", "errored", "expired", "cancelled"]
OUTCOMES: tuple[Outcome, ...] = ("pending", "answered", "errored", "expired", "cancelled")


class SimLine(msgspec.Struct, kw_only=True):
    """One request of a batch and, once the batch ended, its result: the reply (status, headers, body) the
    request got when answered or errored, none when expired or cancelled."""

    custom_id: str
    call: Call
    metadata: Any = None  # what the request carried to be given back with its result (Gemini's metadata)
    # The error the request gets however it is sent, found as the batch was taken (Anthropic's version checks).
    refused: tuple[int, dict[str, str], bytes] | None = None
    outcome: Outcome = "pending"
    status: int = 0
    headers: dict[str, str] = {}
    body: bytes = b""


class SimBatch(msgspec.Struct, kw_only=True):
    """A batch as one of the batch APIs took it."""

    id: str
    number: int  # the store's count of batches: seeds its lines' draws
    wire: str
    model: str
    lines: list[SimLine]
    created_at: float  # time.time(), for the wire's timestamps
    started: float  # time.monotonic(), for its latency
    ended_at: float | None = None  # time.time()
    cancelled_at: float | None = None
    details: dict[str, Any] = {}  # what the wire's batch object repeats: input file, endpoint, display name...

    def count(self, outcome: Outcome) -> int:
        """How many lines have `outcome`."""
        return sum(1 for line in self.lines if line.outcome == outcome)


class StoredFile(msgspec.Struct, kw_only=True):
    """A file of OpenAI's Files API: a batch's input, or its output or errors."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: float


def line_outcome(seed: int, batch_number: int, custom_id: str, expiry_share: float, error_share: float) -> Outcome:
    """Whether a line of an ended batch is expired, errored or answered (the module's docstring)."""
    key = f"{seed}\0{batch_number}\0{custom_id}\0batch-line".encode()
    draw = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64
    if draw < expiry_share:
        return "expired"
    return "errored" if draw < expiry_share + error_share else "answered"


class BatchStore:
    """The batches and files, by id."""

    def __init__(self) -> None:
        self.batches: dict[str, SimBatch] = {}
        self.files: dict[str, StoredFile] = {}
        self._numbers = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:12]  # ids unlike those of an earlier run

    def _id(self, number: int) -> str:
        return f"{self._prefix}{number:012x}"

    def add_file(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        """Keep a file; its id is `file-` and 24 hex digits, as OpenAI's."""
        stored = StoredFile(
            id=f"file-{self._id(next(self._numbers))}",
            filename=filename,
            purpose=purpose,
            data=data,
            created_at=time.time(),
        )
        self.files[stored.id] = stored
        return stored

    def add(self, wire: str, model: str, lines: list[SimLine], id_prefix: str, details: dict[str, Any]) -> SimBatch:
        """Start a batch of `lines` now; its id is `id_prefix` and 24 hex digits."""
        number = next(self._numbers)
        batch = SimBatch(
            id=f"{id_prefix}{self._id(number)}",
            number=number,
            wire=wire,
            model=model,
            lines=lines,
            created_at=time.time(),
            started=time.monotonic(),
            details=details,
        )
        self.batches[batch.id] = batch
        return batch

    def running(self) -> list[SimBatch]:
        """The batches not ended yet."""
        return [batch for batch in self.batches.values() if batch.ended_at is None]

    @staticmethod
    def end(batch: SimBatch, settle: Callable[[SimBatch, SimLine], None]) -> None:
        """End `batch` now, each line given its result by `settle`."""
        for line in batch.lines:
            settle(batch, line)
        batch.ended_at = time.time()

    @staticmethod
    def cancel(batch: SimBatch) -> None:
        """Cancel a running batch: it ends now, every line cancelled."""
        now = time.time()
        for line in batch.lines:
            line.outcome = "cancelled"
        batch.cancelled_at = batch.ended_at = now

    def clear(self) -> None:
        self.batches.clear()
        self.files.clear()
