"""The local S3 -> SQS -> Lambda path: files arriving in `incoming/` become S3 ObjectCreated
notifications, wrapped as SQS messages and handed to the embed handler in batches of up to 10.

Like the real event source mapping, messages the handler reports in `batchItemFailures` (or all
of a batch whose invocation raised) are delivered again after a visibility timeout (here an
exponential backoff), and after `max_receives` deliveries they go to the dead-letter queue,
here one JSON file per message under `<state>/dlq/`.

A file is announced once it is complete: either it appeared by atomic rename (what
`local_stack.ingest` does) or its size and mtime stayed the same over two polls (a copy in
progress keeps growing).

Dot-files are pictures like any other (`.hidden.jpg` is ingested), except the names editors,
copy tools and this stack use for files that are not finished or not pictures: `*.tmp`,
`*.part`, `*.partial`, `*.crdownload`, vim's `.*.swp`/`.swo`/`.swx`, emacs' `.#*`, LibreOffice's
`.~lock.*`, macOS' `._*` and `.DS_Store`, and the lake's own `.artlens-tmp-*`. Each of those is
ignored with one log line naming the reason (`ignored_reason`). Hidden folders are not
descended into (`.git` is not a collection).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artlens.names import INCOMING_PREFIX
from local_stack import events

log = logging.getLogger("local_stack.watcher")

BATCH_SIZE = 10
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
EDITOR_SUFFIXES = (".swp", ".swo", ".swx")
EDITOR_PREFIXES = (".#", ".~lock.", "._", ".artlens-tmp-")
EDITOR_NAMES = frozenset({".DS_Store"})

Signature = tuple[int, int]  # (size, mtime_ns)


@dataclass
class QueuedMessage:
    key: str
    signature: Signature
    body: dict
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    sent_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    first_receive_ms: int | None = None
    receive_count: int = 0
    not_before: float = 0.0
    last_error: str | None = None


def ignored_reason(name: str) -> str | None:
    """Why a file under incoming/ is not announced, or None: it is a drop."""
    lower = name.lower()
    if lower.endswith(IN_PROGRESS_SUFFIXES):
        return "a file still being written (temporary name)"
    if name in EDITOR_NAMES or name.startswith(EDITOR_PREFIXES) or (
        name.startswith(".") and lower.endswith(EDITOR_SUFFIXES)
    ):
        return "an editor, system or stack temporary file"
    return None


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class IncomingWatcher(threading.Thread):
    def __init__(
        self,
        lake_dir: Path,
        dlq_dir: Path,
        embed: Callable[[dict, Any], Any],
        *,
        poll_s: float = 0.3,
        max_receives: int = 3,
        backoff_s: float = 1.0,
    ):
        super().__init__(name="incoming-watcher", daemon=True)
        self.lake_dir = lake_dir
        self.incoming = lake_dir / INCOMING_PREFIX
        self.dlq_dir = dlq_dir
        self.embed = embed
        self.poll_s = poll_s
        self.max_receives = max_receives
        self.backoff_s = backoff_s
        self._stop_event = threading.Event()
        self._last_seen: dict[str, Signature] = {}
        self._queued: dict[str, QueuedMessage] = {}
        # Keys handled (or dead-lettered) in their current version: not announced again unless
        # the file changes. A successful embed deletes the file, so this rarely holds anything.
        self._settled: dict[str, Signature] = self._dead_lettered_keys()
        self._ignored: set[str] = set()  # logged once each
        self.delivered = 0
        self.dead_lettered = 0

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self, timeout: float = 30.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.poll_once()
            except Exception:
                # The watcher must outlive any one bad poll (a file vanishing mid-scan, ...).
                log.exception("watcher poll failed")
            self._stop_event.wait(self.poll_s)

    def poll_once(self) -> None:
        self._scan()
        while not self._stop_event.is_set():
            batch = self._ready_batch()
            if not batch:
                break
            self._deliver(batch)

    # -- scanning -------------------------------------------------------------------------

    def _scan(self) -> None:
        present: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.incoming):
            # Sorted, so drops are delivered in a stable order (names from ingest sort by run).
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                key = path.relative_to(self.lake_dir).as_posix()
                reason = ignored_reason(name)
                if reason is not None:
                    if key not in self._ignored and not name.startswith(".artlens-tmp-"):
                        self._ignored.add(key)
                        log.info("not ingesting %s: %s", key, reason)
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                signature = (stat.st_size, stat.st_mtime_ns)
                present.add(key)
                if key in self._queued or self._settled.get(key) == signature:
                    continue
                if self._last_seen.get(key) == signature:
                    self._enqueue(key, path, signature)
                else:
                    self._last_seen[key] = signature
        for mapping in (self._last_seen, self._settled):
            for key in list(mapping):
                if key not in present:
                    del mapping[key]
        if len(self._ignored) > 10_000:  # a folder of temp files must not grow this forever
            self._ignored.clear()

    def _enqueue(self, key: str, path: Path, signature: Signature) -> None:
        try:
            etag = _md5(path)
        except FileNotFoundError:
            return
        body = events.s3_object_created(key, size=signature[0], etag=etag)
        self._queued[key] = QueuedMessage(key=key, signature=signature, body=body)
        self._last_seen.pop(key, None)

    # -- delivery -------------------------------------------------------------------------

    def _ready_batch(self) -> list[QueuedMessage]:
        now = time.monotonic()
        ready = [m for m in self._queued.values() if m.not_before <= now]
        return ready[:BATCH_SIZE]

    def _deliver(self, batch: list[QueuedMessage]) -> None:
        now_ms = int(time.time() * 1000)
        records = []
        for message in batch:
            message.receive_count += 1
            if message.first_receive_ms is None:
                message.first_receive_ms = now_ms
            records.append(
                events.sqs_message(
                    message.message_id, message.body, message.receive_count,
                    message.first_receive_ms, message.sent_ms,
                )
            )
        failed_ids, error = self._invoke({"Records": records})
        for message in batch:
            if message.message_id in failed_ids:
                message.last_error = error
                self._retry_or_dead_letter(message)
            else:
                self.delivered += 1
                self._settled[message.key] = message.signature
                del self._queued[message.key]

    def _invoke(self, event: dict) -> tuple[set[str], str | None]:
        """Call the handler; returns the ids to redeliver and why."""
        all_ids = {record["messageId"] for record in event["Records"]}
        try:
            response = self.embed(event, events.LambdaContext("artlens-embed", timeout_ms=300_000))
        except Exception as exc:
            log.exception("embed handler raised; the whole batch will be redelivered")
            return all_ids, f"handler raised {type(exc).__name__}"
        failures = (response or {}).get("batchItemFailures") or []
        failed = {str(item.get("itemIdentifier")) for item in failures if isinstance(item, dict)}
        unknown = failed - all_ids
        if unknown:
            # Lambda treats an unknown identifier as a failure of the whole batch.
            log.error("embed handler reported unknown message ids %s", sorted(map(str, unknown)))
            return all_ids, "handler reported unknown message ids"
        return failed, "reported in batchItemFailures" if failed else None

    def _retry_or_dead_letter(self, message: QueuedMessage) -> None:
        if message.receive_count >= self.max_receives:
            self._dead_letter(message)
            return
        delay = self.backoff_s * (2 ** (message.receive_count - 1))
        message.not_before = time.monotonic() + delay
        log.warning(
            "embedding %s failed (delivery %d of %d); retrying in %.1fs",
            message.key, message.receive_count, self.max_receives, delay,
        )

    def _dead_letter(self, message: QueuedMessage) -> None:
        self.dlq_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "messageId": message.message_id,
            "key": message.key,
            "signature": list(message.signature),
            "receiveCount": message.receive_count,
            "lastError": message.last_error,
            "deadLetteredAt": int(time.time() * 1000),
            "body": json.dumps(message.body),
        }
        path = self.dlq_dir / f"{message.message_id}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)
        self.dead_lettered += 1
        self._settled[message.key] = message.signature
        del self._queued[message.key]
        log.error(
            "embedding %s failed %d times; message moved to %s",
            message.key, message.receive_count, path,
        )

    def _dead_lettered_keys(self) -> dict[str, Signature]:
        """Keys already in the DLQ stay parked until their file changes (or the DLQ file goes)."""
        parked: dict[str, Signature] = {}
        if not self.dlq_dir.is_dir():
            return parked
        for path in self.dlq_dir.glob("*.json"):
            try:
                record = json.loads(path.read_text())
                size, mtime_ns = record["signature"]
                parked[record["key"]] = (int(size), int(mtime_ns))
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable DLQ file %s", path)
        return parked
