"""How `flask etl` talks to a terminal: a progress bar with plain numbers that log lines do not break
(below WARNING they go to var/log/cli.log while it draws), one line per error, servers checked first."""
from __future__ import annotations

import logging
import sys

import click
from tqdm import tqdm

from .embedded import VAR_DIR

LOG_FILE = VAR_DIR / "log" / "cli.log"


class SetupError(click.ClickException):
    """The command cannot run as configured (no database, ...): one line, exit status 2."""

    exit_code = 2


def require_servers(app, redis: bool = True) -> None:
    missing = app.config.get("SERVERS_MISSING") or {}
    for name in ("DATABASE_URL",) + (("REDIS_URL",) if redis else ()):
        if name in missing:
            raise SetupError(missing[name])


class _BarSafeHandler(logging.Handler):
    """Writes above the bar (tqdm.write) instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never fail the caller
            self.handleError(record)


class ProgressBar(tqdm):
    """tqdm that, while it draws on a terminal, keeps log lines below WARNING off it (they go to
    var/log/cli.log) and writes the others above the bar. Rows are shown as plain numbers."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("file", sys.stderr)
        kwargs.setdefault("disable", None)          # no bar when stderr is not a terminal
        kwargs.setdefault("dynamic_ncols", True)
        super().__init__(*args, **kwargs)
        self._saved_handlers = None
        if not self.disable:
            self._quiet_logs()

    def show_rows(self, rows: int, per_second: float) -> None:
        self.set_postfix_str(f"{rows:,} rows, {per_second:,.0f} rows/s", refresh=False)

    def _quiet_logs(self) -> None:
        root = logging.getLogger()
        self._saved_handlers = list(root.handlers)
        formatter = root.handlers[0].formatter if root.handlers else None
        handlers: list[logging.Handler] = []
        try:
            LOG_FILE.parent.mkdir(parents=True, exist_ok=True)
            to_file = logging.FileHandler(LOG_FILE)
            to_file.setFormatter(formatter)
            handlers.append(to_file)
        except OSError:
            pass                                    # no writable var/: the lines below WARNING are dropped
        above_bar = _BarSafeHandler(level=logging.WARNING)
        above_bar.setFormatter(formatter)
        for handler in self._saved_handlers:
            for flt in handler.filters:
                above_bar.addFilter(flt)
                for h in handlers:
                    h.addFilter(flt)
        root.handlers[:] = handlers + [above_bar]

    def close(self) -> None:
        super().close()
        if self._saved_handlers is not None:
            root = logging.getLogger()
            for handler in root.handlers:
                if handler not in self._saved_handlers:
                    handler.close()
            root.handlers[:] = self._saved_handlers
            self._saved_handlers = None
