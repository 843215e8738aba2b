"""Serves the current rule set and reloads it when its files change.

A change is picked up at most ``interval`` seconds after it is written. An invalid change is
rejected: its problems are logged and the previous rule set keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from .engine.loader import RuleLoadError, RuleSet, fingerprint, load_ruleset
from .logs import set_every_line_field

log = logging.getLogger(__name__)


class RuleSetProvider:
    def __init__(
        self, rules_dir: Path, site_path: Path, *, hot_reload: bool = True, interval: float = 1.0
    ) -> None:
        # resolved, as the loader caches fingerprints by resolved path
        self.rules_dir, self.site_path = Path(rules_dir).resolve(), Path(site_path).resolve()
        self.hot_reload, self.interval = hot_reload, interval
        self._lock = threading.Lock()
        self._current = load_ruleset(self.rules_dir, self.site_path)  # invalid at start: refuse to start
        set_every_line_field("rules_version", self._current.version)
        self._checked = time.monotonic()
        self._rejected: str | None = None
        self.last_errors: list[str] = []

    def get(self) -> RuleSet:
        if self.hot_reload and time.monotonic() - self._checked >= self.interval:
            self._maybe_reload()
        return self._current

    def _maybe_reload(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is checking; serve the current set meanwhile
        try:
            self._checked = time.monotonic()
            fp = fingerprint(self.rules_dir, self.site_path)
            if fp == self._current.fingerprint:  # unchanged, or a rejected change undone
                self._rejected, self.last_errors = None, []
                return
            if fp == self._rejected:
                return
            try:
                new = load_ruleset(self.rules_dir, self.site_path)
            except RuleLoadError as exc:
                self._rejected = fp
                self.last_errors = exc.problems
                log.error(
                    "rule set change rejected; still serving the previous rules:\n%s", "\n".join(exc.problems)
                )
                return
            self._current, self._rejected, self.last_errors = new, None, []
            set_every_line_field("rules_version", new.version)
            log.info("rule set reloaded: %d rules", len(new.rules))
        finally:
            self._lock.release()
