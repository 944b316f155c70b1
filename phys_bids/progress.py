"""Progress of long steps, from wherever a task runs to the terminal of the run.

Tasks may run in the main process (serial worker), in a process pool (cf) or in
SLURM jobs; they all append one JSON line per event to the file named by
``$PHYS_BIDS_PROGRESS`` (set by the command line in the work directory), and log
the event. :class:`ProgressDisplay` follows that file in the main process and shows
a status line per subject on a terminal, or plain log lines otherwise.

>>> import tempfile, os, json
>>> f = os.path.join(tempfile.mkdtemp(), "progress.jsonl")
>>> os.environ[PROGRESS_ENV] = f
>>> with step("sub-01_T1w", "N4"):
...     pass
>>> [json.loads(x)["state"] for x in open(f)]
['start', 'done']
>>> del os.environ[PROGRESS_ENV]
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PROGRESS_ENV", "emit", "describe", "step", "ProgressDisplay", "read_events"]

PROGRESS_ENV = "PHYS_BIDS_PROGRESS"
log = logging.getLogger("phys_bids.progress")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(label: str, step_name: str, state: str, **extra) -> None:
    """Record one event (``state``: start, done or failed) of ``step_name`` for ``label``."""
    event = {"label": label, "step": step_name, "state": state, "time": time.time(),
             "pid": os.getpid(), **extra}
    path = os.environ.get(PROGRESS_ENV)
    if path:
        # one write() of a short line in append mode: lines from several processes
        # never interleave; the main process shows them (ProgressDisplay)
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")
    else:
        log.info("%s", describe(event))


def describe(event: dict) -> str:
    """One plain line for an event."""
    head = f"{event['label']}: {event['step']}"
    if event["state"] == "done":
        return (f"{head} done in {event.get('seconds', float('nan')):.1f} s "
                f"(process peak RSS {event.get('peak_rss_mb', float('nan')):.0f} MB)")
    if event["state"] == "failed":
        return f"{head} failed: {event.get('error', '')}"
    return f"{head} started"


@contextmanager
def step(label: str, step_name: str):
    """Time a step and report start, end (seconds, process peak RSS) or failure."""
    emit(label, step_name, "start")
    t0 = time.perf_counter()
    try:
        yield
    except BaseException as err:
        emit(label, step_name, "failed", error=f"{type(err).__name__}: {err}"[:300],
             seconds=time.perf_counter() - t0)
        raise
    emit(label, step_name, "done", seconds=round(time.perf_counter() - t0, 3),
         peak_rss_mb=round(_peak_rss_mb(), 1))


def read_events(path) -> list[dict]:
    """All events recorded in a progress file (skipping a torn last line)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class ProgressDisplay:
    """Follow a progress file: on a terminal, redraw a status line of the latest steps;
    otherwise log one plain line per event."""

    def __init__(self, path, *, stream=None, interval: float = 0.5):
        self.path = Path(path)
        self.stream = stream or sys.stderr
        self.interval = interval
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._offset = 0
        self._status: dict[str, str] = {}

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._offset = self.path.stat().st_size if self.path.exists() else 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._poll()
        if self.tty and self._status:
            self.stream.write("\n")
            self.stream.flush()

    def _poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path) as f:
            f.seek(self._offset)
            chunk = f.read()
        end = chunk.rfind("\n") + 1
        self._offset += len(chunk[:end].encode())
        for line in chunk[:end].splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not self.tty:
                log.info("%s", describe(ev))
                continue
            state = {"start": "...", "done": "ok", "failed": "FAILED"}.get(ev["state"], "")
            self._status[ev["label"]] = f"{ev['step']} {state}"
        if self.tty and self._status:
            text = " | ".join(f"{k}: {v}" for k, v in list(self._status.items())[-3:])
            width = 150
            self.stream.write("\r" + text[:width].ljust(width))
            self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()
