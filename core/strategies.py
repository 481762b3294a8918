"""The operator's strategy file: checked by the worker's own compiler, written atomically, kept as versions.

A version is the text with its hash (Policy.version: the first 12 hex digits of its sha256) and the
time it was saved, a row of `strategy_versions`. Saving over a text that is not the newest version
(the shipped file, or one edited by hand) records that text first, so it can always be restored.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
import os
import tempfile
from pathlib import Path

from core import store
from core.health import liveness
from core.dsl import Diagnostic, Policy, StrategyError, compile_strategy
from core.store import Database
from core.strategy_file import MAX_FILE_BYTES, read_within_limit

log = logging.getLogger(__name__)
LOADED_KEY, ERROR_KEY = "strategy_loaded_version", "strategy_error"  # written by the worker


class UnknownVersion(LookupError):
    """No saved strategy has that version. Caller: tell the operator (HTTP 404)."""


@dataclasses.dataclass(frozen=True)
class StrategyVersion:
    """One saved strategy text."""

    id: int
    version: str
    text: str
    saved_at_ms: int


@dataclasses.dataclass(frozen=True)
class WorkerView:
    """What the worker runs compared with the saved file."""

    loaded_version: str | None  # None before the worker ever loaded one
    error: str  # why the worker refused the file's text, or ""
    is_alive: bool

    def has_loaded(self, version: str) -> bool:
        """Whether the worker runs `version` and has not refused a newer text since."""
        return self.loaded_version == version and not self.error


def normalize(text: str) -> str:
    """The text as it is stored: browsers send CRLF line ends from a textarea, the file gets LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def compile_text(text: str, short_refusal: str | None = None) -> Policy:
    """Compile a strategy as the worker will; raise StrategyError (every error) when it is not valid.
    `short_refusal`: why the broker cannot short (Settings.short_refusal), refusing every SHORT."""
    return compile_strategy(normalize(text), short_refusal)  # refuses more than MAX_CHARS before parsing


def check(text: str, short_refusal: str | None = None) -> tuple[Policy | None, list[Diagnostic]]:
    """The compiled policy and no errors, or None and every error of the text (the editor's live check)."""
    try:
        return compile_text(text, short_refusal), []
    except StrategyError as exc:
        return None, exc.errors


def read_strategy(path: str | Path) -> str:
    """The strategy file's text; "" when it does not exist. StrategyError when it is too large or not UTF-8."""
    try:
        return read_within_limit(path)
    except FileNotFoundError:
        return ""


def read_for_editor(path: str | Path) -> tuple[str, StrategyError | None]:
    """What the web app shows of the strategy file: its text, and why the worker refuses to read it (None
    when it reads it). A file that is not UTF-8 is shown with U+FFFD for its bad bytes, one too large not
    at all."""
    try:
        return read_strategy(path), None
    except StrategyError as exc:
        if os.stat(path).st_size > MAX_FILE_BYTES:
            return "", exc
        with open(path, "rb") as file:
            return file.read(MAX_FILE_BYTES).decode("utf-8", errors="replace"), exc


def save_strategy(path: str | Path, text: str, db: Database, now_ms: int, short_refusal: str | None = None) -> Policy:
    """Compile `text` (raising StrategyError, nothing written), write it atomically and record it."""
    text = normalize(text)
    policy = compile_text(text, short_refusal)
    path = Path(path)
    with store.transaction(db):  # one save at a time, across processes
        newest = _newest_version(db)
        previous = _readable_or_set_aside(path, now_ms)
        if previous and version_of(previous) not in (newest, policy.version):
            _record(db, version_of(previous), previous, now_ms)
            newest = version_of(previous)
        if policy.version != newest:
            _record(db, policy.version, text, now_ms)
        write_atomically(path, text)
    return policy


def _readable_or_set_aside(path: Path, now_ms: int) -> str:
    """The file's text before a save replaces it; a file that cannot be read as a strategy (too large, not
    UTF-8) cannot be kept as a version, so it is renamed to `<name>.unreadable-<ms>` beside it: nothing is lost."""
    try:
        return read_strategy(path)
    except StrategyError as exc:
        aside = path.with_name(f"{path.name}.unreadable-{now_ms}")
        os.replace(path, aside)
        log.warning("%s was not a readable strategy (%s): kept as %s", path, exc, aside.name)
        return ""


def restore_version(path: str | Path, version: str, db: Database, now_ms: int) -> Policy:
    """Save a saved version's text again, making it the current strategy."""
    return save_strategy(path, find_version(db, version).text, db, now_ms)


def write_atomically(path: str | Path, text: str) -> None:
    """Replace the file in one step: a reader sees the old text or the new one, never a part."""
    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:  # the rename itself survives a power cut only once the folder is synced
        os.fsync(directory)
    finally:
        os.close(directory)


def versions(db: Database, limit: int = 50, offset: int = 0) -> list[StrategyVersion]:
    """Saved versions, newest first: `limit` of them after skipping the `offset` newest."""
    rows = db.execute("SELECT id, version, text, saved_at_ms FROM strategy_versions ORDER BY id DESC LIMIT ? OFFSET ?",
                      [limit, offset]).fetchall()
    return [StrategyVersion(*row) for row in rows]


def version_count(db: Database) -> int:
    """How many versions are saved."""
    return db.execute("SELECT count(*) FROM strategy_versions").fetchone()[0]


def find_version(db: Database, version: str) -> StrategyVersion:
    """The newest saved text with this version; raises UnknownVersion."""
    row = db.execute("SELECT id, version, text, saved_at_ms FROM strategy_versions WHERE version = ? "
                     "ORDER BY id DESC LIMIT 1", [version]).fetchone()
    if row is None:
        raise UnknownVersion(f"no saved strategy has version {version!r}")
    return StrategyVersion(*row)


def diff(current: str, other: str) -> list[str]:
    """The unified diff that turns the current text into `other` (what restoring it would change), no header."""
    return list(difflib.unified_diff(normalize(current).splitlines(), normalize(other).splitlines(), lineterm=""))[2:]


def worker_view(db: Database, now_ms: int) -> WorkerView:
    """The version the worker last loaded, the error it last reported, and whether it is alive."""
    return WorkerView(store.get_meta(db, LOADED_KEY), store.get_meta(db, ERROR_KEY) or "",
                      liveness.worker_status(db, now_ms).alive)


def version_of(text: str) -> str:
    """The version the worker gives a text (Policy.version), for texts that may not compile."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _newest_version(db: Database) -> str | None:
    row = db.execute("SELECT version FROM strategy_versions ORDER BY id DESC LIMIT 1").fetchone()
    return row[0] if row else None


def _record(db: Database, version: str, text: str, now_ms: int) -> None:
    db.execute("INSERT INTO strategy_versions(version, text, saved_at_ms) VALUES (?, ?, ?)", [version, text, now_ms])
