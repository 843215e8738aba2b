"""Serves the current rule set and reloads it when its files change.

A change is picked up at most ``interval`` seconds after it is written. An invalid change is
rejected: its problems are logged and the previous rule set keeps serving. Between changes a check
is one ``os.stat`` per rule file and folder; the content fingerprint is computed only when one of
them changed.
"""

from __future__ import annotations

import logging
import os
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
        self._watched = self._watch_list()
        self._seen = _snapshot(self._watched)  # before loading: a change during the load is seen next time
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
            if _snapshot(self._watched) == self._seen:
                return  # no file or folder changed: the content cannot have changed
            self._watched = self._watch_list()
            self._seen = _snapshot(self._watched)
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

    def _watch_list(self) -> list[str]:
        """Every folder under the rules directory, its YAML files and the site file: a file added,
        removed or renamed changes its folder's modification time, an edit changes the file's."""
        paths = [str(self.site_path)]
        for folder, _dirs, files in os.walk(self.rules_dir):
            paths.append(folder)
            paths += [os.path.join(folder, f) for f in sorted(files) if f.endswith((".yaml", ".yml"))]
        return paths


def _snapshot(paths: list[str]) -> list[tuple[int, int, int] | None]:
    """(size, modification time, inode) of each path (None: gone). About 100 ``os.stat`` calls for
    the bundled rules: a tenth of the loader's content-fingerprint check, which stats through
    pathlib and is now only asked when one of these changed."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_size, st.st_mtime_ns, st.st_ino))
    return out
