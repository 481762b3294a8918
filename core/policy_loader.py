"""Hot reload of the strategy file: the worker asks for the policy before every decision."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from core.dsl import Policy, StrategyError, compile_strategy, hold_policy
from core.strategy_file import read_within_limit

log = logging.getLogger(__name__)


class PolicyLoader:
    """Gives the current compiled policy of a strategy file, re-reading it only when it changed.

    A change is seen through (mtime in ns, size, inode), so an unchanged file costs one `stat` per
    call. A file that fails to compile never replaces the running policy: the last good one stays and
    `error` holds why the new text was refused. A missing file gives a HOLD-only policy. A file too
    large to be a strategy is refused without being read (the text's limit applies before parsing).
    """

    def __init__(self, path: str | Path, short_refusal: str | None = None):
        self.path = Path(path)
        self.short_refusal = short_refusal  # the broker cannot short: a text with SHORT is refused, saying why
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
            text = read_within_limit(self.path)  # refuses a huge file without reading it, and one not UTF-8
            if text == self.policy.text and self.error is None:
                return False
            policy = compile_strategy(text, self.short_refusal)
        except OSError as exc:  # e.g. replaced between stat and open: try again on the next call
            self._seen = None
            log.warning("could not read strategy file %s: %s", self.path, exc)
            return False
        except StrategyError as exc:
            self.error = exc
            log.error("strategy file %s is invalid, still running version %s: %s",
                      self.path, self.policy.version, exc)
            return False
        self.policy, self.error = policy, None
        log.info("strategy %s loaded from %s: %d rules", policy.version, self.path, len(policy.rules))
        return True
