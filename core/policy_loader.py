"""Hot reload of the strategy file: the worker asks for the policy before every decision."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from core.dsl import Diagnostic, Policy, StrategyError, compile_strategy, hold_policy
from core.dsl.parser import MAX_CHARS

MAX_FILE_BYTES = 4 * MAX_CHARS  # UTF-8 takes at most 4 bytes a character

log = logging.getLogger(__name__)


class PolicyLoader:
    """Gives the current compiled policy of a strategy file, re-reading it only when it changed.

    A change is seen through (mtime in ns, size, inode), so an unchanged file costs one `stat` per
    call. A file that fails to compile never replaces the running policy: the last good one stays and
    `error` holds why the new text was refused. A missing file gives a HOLD-only policy. A file too
large to be a strategy is refused without being read (the text's limit applies before parsing).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._path_str = str(self.path)
        self._seen: tuple[int, int, int] | None = None
        self.policy: Policy = hold_policy("no strategy loaded yet")
        self.error: StrategyError | None = None
        self.missing = False

    def current(self) -> Policy:
        """The policy to decide with now (reloading first if the file changed)."""
        self.refresh()
        return self.policy

    def refresh(self) -> bool:
        """Reload if the file changed; True when a new policy was installed."""
        try:
            st = os.stat(self._path_str)
        except FileNotFoundError:
            if not self.missing:
                log.warning("strategy file %s is missing: holding every position until it exists", self.path)
                self.missing, self._seen, self.error = True, None, None
                self.policy = hold_policy("strategy file missing")
                return True
            return False
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key == self._seen:
            return False
        self._seen = key
        self.missing = False
        try:
            if st.st_size > MAX_FILE_BYTES:  # surely too long: refuse it without reading it at all
                raise StrategyError([Diagnostic(1, 1, f"the file is {st.st_size:,} bytes long; a strategy has "
                                                      f"at most {MAX_CHARS:,} characters")])
            try:
                text = self.path.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:  # e.g. replaced between stat and open: try again on the next call
                self._seen = None
                log.warning("could not read strategy file %s: %s", self.path, exc)
                return False
            if text == self.policy.text and self.error is None:
                return False
            policy = compile_strategy(text)
        except StrategyError as exc:
            self.error = exc
            log.error("strategy file %s is invalid, still running version %s: %s",
                      self.path, self.policy.version, exc)
            return False
        self.policy, self.error = policy, None
        log.info("strategy %s loaded from %s: %d rules", policy.version, self.path, len(policy.rules))
        return True
