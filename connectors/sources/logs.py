"""Kind ``logs``: kernel and service log lines become Alarms (rules: models/log_rules.py).

Reads journald with ``journalctl -o json -f`` where a journal is present, else follows a file as
``tail -F`` does. Options:

- ``reader``: ``auto`` (default: journald when ``journalctl`` runs and a journal directory holds
  files, else the file), ``journald`` or ``file``;
- ``path``: the file to follow (kern.log, syslog, a daemon's own log); ``program``/``host``: the
  program and host of its lines when they carry no syslog header (default host: this machine);
- ``state_file``: where the position is kept (file: inode and offset; journald: the last entry's cursor),
  so a restart goes on where it stopped; without it reading starts at the end;
- ``journal_args``: extra journalctl arguments (``[-k]``, ``[-u, slurmd]``);
- ``rules``: a rules file replacing the shipped set (``LOG_RULES_FILE``); ``extra_rules``: rules tried first.

A file that is rotated (a new file at the path) is read to its end first, then the new one from its
start; a truncated file is read again from its start. Malformed journal JSON and matched lines
with no device go to ``deadletter``; lines no rule matches are ignored and counted.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Callable

from opsloop.config.assets import LOG_RULES_FILE
from opsloop.config.site import Site
from opsloop.config.sources import SourceConfig, SourceConfigError, load_rules_doc
from opsloop.connectors.sources.base import Deliver, Readings, Reject
from opsloop.models.log_rules import LogAlarms, LogLine, LogRuleError, parse_journal, parse_rules, parse_syslog

log = logging.getLogger("opsloop.source")
JOURNAL_DIRS = (Path("/run/log/journal"), Path("/var/log/journal"))
READ_BYTES = 1 << 20  # one batch reads at most this much of a file
MAX_LINE = 64 * 1024  # a longer "line" (binary garbage, no newline) is handed on in pieces, never held whole


class FileFollower:
    """One file followed across rotation and truncation; ``commit`` saves the position of the lines read."""

    def __init__(self, path: Path, state_path: Path | None = None):
        self.path = path
        self.state_path = state_path
        self.file = None
        self.inode = None
        self.partial = b""
        self.problem = ""  # why the file cannot be opened, if it cannot
        self._open(resume=True)

    def _open(self, resume: bool) -> None:
        try:
            self.file = open(self.path, "rb")
        except FileNotFoundError:
            self.file = None
            return
        except OSError as exc:  # EACCES: told once per change, tried again at every read
            if str(exc) != self.problem:
                log.warning("cannot follow %s: %s", self.path, exc)
            self.problem, self.file = str(exc), None
            return
        self.problem = ""
        stat = os.fstat(self.file.fileno())
        self.inode, self.partial = stat.st_ino, b""
        if not resume:
            return  # a new file at the path: from its start
        saved = self._saved()
        if saved and saved.get("inode") == stat.st_ino and saved.get("offset", 0) <= stat.st_size:
            self.file.seek(saved["offset"])
        elif saved is None:
            self.file.seek(0, os.SEEK_END)  # first run: only what comes from now on
        # else: rotated while stopped: the new file from its start

    def _saved(self) -> dict | None:
        if self.state_path is None or not self.state_path.exists():
            return None
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def read(self) -> list[bytes]:
        """Complete lines written since the last read (the rotated file's rest first)."""
        if self.file is None:
            self._open(resume=False)
            if self.file is None:
                return []
        data = self.file.read(READ_BYTES)
        lines = self._split(data)
        if len(data) == READ_BYTES:
            return lines  # more to read: rotation is looked at once this file is drained
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return lines  # rotated away, the new one not yet created
        if stat.st_ino != self.inode:
            if self.partial:
                lines.append(self.partial)  # the old file's last line, without its newline
            self.file.close()
            self._open(resume=False)
            lines += self.read()
        elif stat.st_size < self.file.tell():
            self.file.seek(0)  # truncated in place (copytruncate)
            self.partial = b""
        return lines

    def _split(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        lines, self.partial = split_lines(self.partial + data)
        return lines

    def commit(self) -> None:
        if self.state_path is None or self.file is None:
            return
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"path": str(self.path), "inode": self.inode,
                                   "offset": self.file.tell() - len(self.partial)}))
        os.replace(tmp, self.state_path)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines and the rest; a rest longer than ``MAX_LINE`` is a line of its own."""
    *lines, rest = data.split(b"\n")
    if len(rest) > MAX_LINE:
        lines.append(rest)
        rest = b""
    return lines, rest


def journal_present() -> bool:
    return shutil.which("journalctl") is not None and any(d.is_dir() and any(d.rglob("*.journal"))
                                                          for d in JOURNAL_DIRS)


def load_rules(config: SourceConfig):
    try:
        path = Path(config.option("rules") or LOG_RULES_FILE)
        rules = parse_rules(load_rules_doc(path), str(path))
        extra = config.option("extra_rules")
        return (parse_rules(extra, f"{config.source}: options.extra_rules") if extra else ()) + rules
    except (SourceConfigError, LogRuleError) as exc:
        raise config.error(str(exc)) from exc


class Logs:
    def __init__(self, config: SourceConfig, site: Site, clock: Callable[[], float]):
        self.config = config
        self.clock = clock
        reader = config.option("reader", "auto")
        if reader not in ("auto", "journald", "file"):
            raise config.error(f"options.reader must be auto, journald or file (got {reader!r})")
        if reader == "auto":
            reader = "journald" if journal_present() else "file"
        if reader == "file" and not config.option("path"):
            raise config.error("options.path is required to follow a file (no journal here, or reader: file)")
        self.reader = reader
        state = config.option("state_file")
        self.state_path = Path(state) if state else None
        self.program = config.option("program")
        self.host = config.option("host") or socket.gethostname()
        self.alarms = LogAlarms(load_rules(config), config.devices, config.site, config.name, self.host)
        self.lines = 0
        self.malformed = 0
        self.logged_ms = 0  # when the counts were last logged (a minute apart)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def readings(self, raw_lines: list[bytes], journal: bool) -> Readings:
        out, now = Readings(), self.now_ms()
        for raw in raw_lines:
            if not raw.strip():
                continue
            self.lines += 1
            try:
                line: LogLine = (parse_journal(json.loads(raw)) if journal else
                                 parse_syslog(raw.decode("utf-8", "replace"), self.host, self.program))
            except ValueError as exc:  # JSONDecodeError is one
                self.malformed += 1
                out.rejects.append(Reject(raw, "decode", f"journal entry: {exc}"))
                continue
            unmapped = self.alarms.unmapped
            record = self.alarms.alarm(line, now)
            if record is not None:
                out.alarms.append(record)
            elif self.alarms.unmapped > unmapped:
                out.rejects.append(Reject(raw, "unknown", self.alarms.last_unmapped))
        if now - self.logged_ms >= 60_000:
            self.logged_ms = now
            log.info("%s: %s", self.config.name, self.stats())
        return out

    def stats(self) -> dict[str, int]:
        a = self.alarms
        return {"lines": self.lines, "alarms": a.matched, "ignored": a.ignored, "unmapped": a.unmapped,
                "malformed": self.malformed}

    def serve(self, deliver: Deliver, stop: threading.Event) -> None:
        log.info("%s: reading %s", self.config.name, "journald" if self.reader == "journald" else
                 self.config.option("path"))
        try:
            if self.reader == "journald":
                self._serve_journal(deliver, stop)
            else:
                self._serve_file(deliver, stop)
        finally:
            log.info("%s: %s", self.config.name, self.stats())

    def _serve_file(self, deliver: Deliver, stop: threading.Event) -> None:
        follower = FileFollower(Path(self.config.option("path")), self.state_path)
        try:
            while not stop.is_set():
                lines = follower.read()
                if not lines:
                    stop.wait(float(self.config.option("follow_s", 0.2)))
                    continue
                deliver(self.readings(lines, journal=False))
                follower.commit()
        finally:
            follower.close()

    def _serve_journal(self, deliver: Deliver, stop: threading.Event) -> None:
        argv = ["journalctl", "-o", "json", "-f", "--no-pager", *map(str, self.config.option("journal_args", []))]
        failures = 0
        while not stop.is_set():
            cursor = self._saved_cursor()  # kept by us: journalctl 252 writes --cursor-file only on a clean exit
            at = [f"--after-cursor={cursor}"] if cursor else ["--lines=0"]  # first run: from now on
            try:
                proc = subprocess.Popen(argv + at, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            except OSError as exc:
                why = str(exc)
            else:
                try:
                    self._pump(proc, deliver, stop)
                finally:
                    proc.terminate()
                    proc.wait(5)
                why = f"rc {proc.returncode}: {proc.stderr.read().decode(errors='replace').strip()[-300:]}"
            if not stop.is_set():
                failures += 1
                wait = min(self.config.backoff_max_s, self.config.interval_s * 2 ** (failures - 1))
                log.warning("%s: journalctl ended (%s); again in %.0f s", self.config.name, why, wait)
                stop.wait(wait)

    def _saved_cursor(self) -> str | None:
        if self.state_path is None or not self.state_path.exists():
            return None
        return self.state_path.read_text().strip() or None

    def _save_cursor(self, lines: list[bytes]) -> None:
        """The last entry's ``__CURSOR``, once its batch is delivered."""
        if self.state_path is None:
            return
        for raw in reversed(lines):
            try:
                cursor = json.loads(raw).get("__CURSOR")
            except (ValueError, AttributeError):
                continue
            if isinstance(cursor, str):
                tmp = self.state_path.with_suffix(".tmp")
                tmp.write_text(cursor)
                os.replace(tmp, self.state_path)
                return

    def _pump(self, proc: subprocess.Popen, deliver: Deliver, stop: threading.Event) -> None:
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        partial = b""
        try:
            while not stop.is_set():
                if not selector.select(0.5):
                    continue
                data = os.read(proc.stdout.fileno(), READ_BYTES)
                if not data:
                    return  # journalctl exited
                lines, partial = split_lines(partial + data)
                if lines:
                    deliver(self.readings(lines, journal=True))
                    self._save_cursor(lines)
        finally:
            selector.close()


def build(config: SourceConfig, site: Site, clock: Callable[[], float]) -> Logs:
    return Logs(config, site, clock)
