"""What a run shows while it runs: one live progress view; everything else goes to the run's log folder.

The terminal gets one tqdm bar (done/running/failed of the total number of trials, i.e. (trial, seed)
pairs; elapsed time and an ETA that tqdm derives from the measured rate of finished trials) and, when
a trial fails, its error and the last lines of its log. Ray's driver-side logs, our own log lines and
each trial's output go to files under ``<store>/logs/<run_id>/``:

    driver.log          Ray and Ray Tune on the driver, and the harness's own log lines
    <trial>.log         one per trial unit: the method's log lines, prints and warnings (worker side)
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

#: how many of a failed trial's last log lines the terminal shows
TAIL_LINES = 12
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def trial_name(unit: dict[str, Any] | Any) -> str:
    """``method-variant-dataset-s0_1``: Ray Tune's trial folder name and the trial's log file name."""
    u = unit if isinstance(unit, dict) else unit.model_dump()
    return f"{u['method']}-{u['variant']}-{u['dataset']}-s{'_'.join(map(str, u['seeds']))}"


def trial_log_path(unit: dict[str, Any] | Any) -> Path:
    u = unit if isinstance(unit, dict) else unit.model_dump()
    return Path(u["store_root"]) / "logs" / str(u["run_id"]) / f"{trial_name(u)}.log"


def tail(path: Path, n: int = TAIL_LINES) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


@contextlib.contextmanager
def output_to_file(path: Path, *, loggers: tuple[str, ...] = ()) -> Iterator[TextIO]:
    """Send this process's log records, ``print`` output and warnings to ``path`` for the duration.

    Yields the terminal's stderr as it was before, for the progress view. ``loggers`` names loggers
    with handlers of their own (Ray's ``ray`` logger does not propagate to the root) to redirect too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    terminal = sys.stderr
    fh = open(path, "a", buffering=1)  # noqa: SIM115 - closed in finally
    handler = logging.StreamHandler(fh)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    saved = []
    for name in ("", *loggers):
        lg = logging.getLogger(name)
        saved.append((lg, lg.handlers[:], lg.propagate))
        lg.handlers = [handler]
        if name:
            lg.propagate = False
    root = logging.getLogger()
    level = root.level
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    show_warning = warnings.showwarning
    warnings.showwarning = lambda msg, cat, fn, ln, file=None, line=None: fh.write(
        warnings.formatwarning(msg, cat, fn, ln, line))
    try:
        with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            yield terminal
    finally:
        warnings.showwarning = show_warning
        root.setLevel(level)
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
        fh.close()


class RunProgress:
    """done/running/failed of total, elapsed and ETA, on one line that redraws itself."""

    def __init__(self, total: int, stream: TextIO | None = None, log_dir: Path | None = None):
        self.stream = stream or sys.stderr
        self.log_dir = log_dir
        self.running = 0
        self.failed = 0
        self.bar = tqdm(total=total, unit="trial", file=self.stream, dynamic_ncols=True, mininterval=0.5,
                        desc="trials", bar_format="{desc}: {n_fmt}/{total_fmt} done{postfix} {bar} "
                                                  "{elapsed} elapsed, ETA {remaining}")
        self._postfix()
        self._stop = threading.Event()
        # redraw every second so elapsed and ETA move while long trials run (tqdm redraws only on updates)
        self._ticker = threading.Thread(target=self._tick, daemon=True, name="bench-progress")
        self._ticker.start()

    def _tick(self) -> None:
        every = 1.0 if getattr(self.stream, "isatty", lambda: False)() else 30.0  # a log file: fewer redraws
        while not self._stop.wait(every):
            self.bar.refresh()

    def _postfix(self, refresh: bool = True) -> None:
        self.bar.set_postfix_str(f"{self.running} running, {self.failed} failed", refresh=refresh)

    def started(self, n: int) -> None:
        self.running += n
        self._postfix()

    def finished(self, n: int, n_failed: int = 0) -> None:
        self.running = max(0, self.running - n)
        self.failed += n_failed
        self._postfix(refresh=False)
        self.bar.update(n)

    def say(self, line: str) -> None:
        self.bar.write(line, file=self.stream)

    def trial_failed(self, unit: dict[str, Any], why: str) -> None:
        """One line naming the trial and why, then the last lines of its log (indented)."""
        log = trial_log_path(unit)
        self.say(f"FAILED {unit['method']}/{unit['variant']} on {unit['dataset']}, seed(s) "
                 f"{', '.join(map(str, unit['seeds']))}: {why}")
        lines = tail(log)
        if lines:
            self.say(f"  last {len(lines)} lines of {log}:")
            for line in lines:
                self.say(f"  | {line}")

    def close(self) -> None:
        self._stop.set()
        self._ticker.join()
        self.bar.close()
