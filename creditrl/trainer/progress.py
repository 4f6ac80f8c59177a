"""User-facing progress: a rich progress bar with one summary line per step."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def make_console() -> Console:
    return Console(highlight=False, soft_wrap=True)


class StepProgress:
    """Context manager: `advance(line)` prints the step's summary line above the bar and moves the bar."""

    def __init__(self, console: Console, total: int, start: int = 0, enabled: bool = True, label: str = "train"):
        self.console, self.total, self.start, self.enabled, self.label = console, total, start, enabled, label
        self.progress: Progress | None = None

    def __enter__(self) -> "StepProgress":
        if self.enabled:
            self.progress = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                                     transient=True)
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=self.total, completed=self.start)
        return self

    def advance(self, line: str | None = None) -> None:
        if line and self.enabled:
            self.console.print(line)
        if self.progress is not None:
            self.progress.advance(self.task)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
