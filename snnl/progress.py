"""Progress of long work: bars on a terminal, plain lines in a log.

``Progress(mode, ...)``, with ``mode``:

- ``True`` / ``"auto"``: tqdm bars (epochs, and the batches of the current
  epoch) when stderr is a terminal; one plain line per epoch otherwise, so a
  redirected log holds readable lines, not carriage returns and escape codes;
- ``"lines"``: one plain line per epoch even on a terminal (``--quiet``);
- ``False`` / ``"none"``: nothing.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

MODES = (True, False, "auto", "lines", "none")


def from_verbose(verbose) -> bool | str:
    """An estimator's ``verbose`` as a progress mode: a mode, or an integer as
    scikit-learn's estimators take it (0: nothing; above 0: bars on a
    terminal, a line per epoch otherwise)."""
    if isinstance(verbose, str) and verbose in MODES:
        return verbose
    if isinstance(verbose, int) and verbose >= 0:  # bool is an int
        return bool(verbose)
    raise ValueError(f"verbose must be True, False, an integer >= 0 or one of 'auto', 'lines', 'none'; got {verbose!r}")


def _format(fields: dict) -> str:
    return " ".join(f"{key}={value}" for key, value in fields.items())


class Progress:
    def __init__(self, mode, name: str, start_epoch: int, total_epochs: int, *, stream=None):
        if mode not in MODES:
            raise ValueError(f"progress must be one of {MODES}, got {mode!r}")
        self.stream = stream or sys.stderr
        if mode in (True, "auto"):
            mode = "bars" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = {False: "none"}.get(mode, mode)
        self.name, self.total = name, total_epochs
        self._epochs = None
        if self.mode == "bars":
            self._epochs = tqdm(
                desc=name, unit="epoch", initial=start_epoch, total=total_epochs, dynamic_ncols=True, file=self.stream
            )
        self._batches = None

    def batches(self, epoch: int, n_batches: int):
        """The batch indices of an epoch (with a bar on a terminal)."""
        if self.mode != "bars":
            return range(n_batches)
        self._batches = tqdm(
            range(n_batches), desc=f"epoch {epoch + 1}", unit="batch", leave=False, dynamic_ncols=True, file=self.stream
        )
        return self._batches

    def batch_done(self, fields: dict) -> None:
        if self._batches is not None:
            self._batches.set_postfix(fields)

    def epoch_done(self, epoch: int, fields: dict, seconds: float) -> None:
        if self._epochs is not None:  # bars
            self._epochs.update(1)
            self._epochs.set_postfix(fields)
        elif self.mode == "lines":
            print(
                f"{self.name} epoch {epoch + 1}/{self.total}: {_format(fields)} ({seconds:.1f} s)",
                file=self.stream,
                flush=True,
            )

    def note(self, text: str) -> None:
        if self._epochs is not None:  # bars
            self._epochs.write(text, file=self.stream)
        elif self.mode == "lines":
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """End the bars (also when training is interrupted: a message printed
        after this starts on a line of its own, not inside a bar)."""
        for bar in (self._batches, self._epochs):
            if bar is not None:
                bar.close()
        self._batches = self._epochs = None
