"""Progress as plain lines, for output that is not a terminal (SLURM, nohup, ``> log.txt``).

``RichProgressBar`` redraws one live display and, without a terminal, prints nothing until an epoch ends (often
nothing at all). ``LogProgressBar`` prints a flushed line every ``every_seconds`` while batches run, and one when
each epoch and each validation / test / predict run starts and ends. ``progress_bar_callback`` picks the bar for
the current stdout; ``plain_for_log_files`` swaps the bars (and Rich's model summary) of a callback list when stdout
is not a terminal.
"""

from __future__ import annotations

import datetime
import math
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, RichModelSummary, RichProgressBar, TQDMProgressBar
from lightning.pytorch.trainer.states import RunningStage

from ask_the_expert.utils.log_output import is_terminal

# The clock behind every interval, rate and ETA; tests replace it to make the intervals exact.
_clock = time.monotonic


# Each evaluation loop's label in the log lines and the trainer attribute holding its batch count.
_EVAL_LOOPS = {
    RunningStage.SANITY_CHECKING: ("sanity check", "num_sanity_val_batches"),
    RunningStage.VALIDATING: ("val", "num_val_batches"),
    RunningStage.TESTING: ("test", "num_test_batches"),
    RunningStage.PREDICTING: ("predict", "num_predict_batches"),
}


def _duration(seconds: float) -> str:
    """``H:MM:SS`` (``D days, H:MM:SS`` beyond a day), rounded to the second."""
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def _number(value: float) -> str:
    """Four significant digits, no exponent for ordinary magnitudes: 2.303, 0.1250, 1.2e-05."""
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.4g}"


def _metric(value: Any) -> str | None:
    """A progress-bar value as short text, or None when it is not a scalar worth showing."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str):
        return value
    return None


def _batch_size(batch: Any) -> int | None:
    """Samples in ``batch``: the length of its first tensor (also inside tuples, lists and dicts), else None."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim > 0 else None
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            if (size := _batch_size(item)) is not None:
                return size
    return None


def _total(batches: int | float | list[int | float] | None) -> float:
    """Number of batches over all dataloaders (``inf`` for an iterable of unknown length, 0 when unknown)."""
    if batches is None:
        return 0
    if isinstance(batches, (list, tuple)):
        return float(sum(batches))
    return float(batches)


def _count(total: float) -> str:
    return str(int(total)) if math.isfinite(total) else "?"


def _batches(total: float) -> str:
    """``1 batch``, ``8 batches``, ``? batches`` (unknown length)."""
    return "1 batch" if total == 1 else f"{_count(total)} batches"


class _Meter:
    """Batches, samples and busy time since a start and since the last printed line."""

    def __init__(self, now: float) -> None:
        self.start = now
        self.mark = now  # end of the last counted batch (or of a pause): time after it is busy time
        self.batches = 0
        self.samples = 0
        self.busy = 0.0
        self.line_at = now
        self.line_batches = 0
        self.line_samples = 0
        self.line_busy = 0.0

    def count(self, now: float, samples: int | None) -> None:
        busy = max(now - self.mark, 0.0)
        self.mark = now
        self.batches += 1
        self.line_batches += 1
        self.samples += samples or 0
        self.line_samples += samples or 0
        self.busy += busy
        self.line_busy += busy

    def line_due(self, now: float, every_seconds: float) -> bool:
        return now - self.line_at >= every_seconds

    def rate(self, since_line: bool, world_size: int) -> str:
        """Samples/s (batches/s if batches have no tensors) over the busy time, all ranks together."""
        samples, batches, busy = (
            (self.line_samples, self.line_batches, self.line_busy)
            if since_line
            else (self.samples, self.batches, self.busy)
        )
        if busy <= 0 or batches == 0:
            return "- samples/s"
        if samples == 0:
            return f"{_number(batches * world_size / busy)} batches/s"
        return f"{_number(samples * world_size / busy)} samples/s"

    def printed(self, now: float) -> None:
        self.line_at = now
        self.line_batches = self.line_samples = 0
        self.line_busy = 0.0


class LogProgressBar(ProgressBar):
    """A progress "bar" of plain, flushed lines for logs that are not terminals; rank zero only.

    Training prints a line at most every ``every_seconds`` (at the end of the batch that crosses it) and one at
    each epoch end (each line starts with the wall-clock time, ``12:00:21``)::

      train epoch 1/3 batch 3/16 step 3 | 12.5 samples/s | loss=2.31 | elapsed 0:00:21 | ETA epoch 0:01:31, fit 0:05:15

    Epochs count from 1 (``epoch 1/3`` is Lightning's ``current_epoch`` 0). samples/s is measured over the
    interval since the previous line, without validation time, and counts all ranks (rank zero's batches times
    the world size). The epoch ETA uses this epoch's training speed; the fit ETA uses the wall time per batch
    since the fit started (validation included) and the end set by ``max_epochs`` / ``max_steps``.
    Validation (also the sanity check), test and predict print a line when they start (number of batches), every
    ``every_seconds`` while they run and when they end (time taken, and the progress-bar metrics they produced:
    new or changed values, and those whose name starts with the stage, ``val``, ``test`` or ``predict``).

    Args:
        every_seconds: the shortest interval between two progress lines of the same loop.
        stream: where the lines go; ``None`` (default) is the current ``sys.stdout``.
    """

    def __init__(self, every_seconds: float = 20.0, stream: TextIO | None = None) -> None:
        super().__init__()
        if not every_seconds >= 0:
            raise ValueError(f"LogProgressBar: every_seconds must be >= 0, got {every_seconds}")
        self.every_seconds = float(every_seconds)
        self.stream = stream
        self._enabled = True
        self._fit_start: float | None = None
        self._fit_batches = 0
        self._epoch: _Meter | None = None
        self._position = 0  # the last training batch's number in its epoch (1-based)
        self._eval: _Meter | None = None
        self._eval_total = 0.0
        self._eval_metrics: dict[str, str] = {}

    # --- ProgressBar interface -------------------------------------------------------------------------------------

    @property
    def is_enabled(self) -> bool:
        return self._enabled and (self._trainer is None or self.trainer.is_global_zero)

    @property
    def is_disabled(self) -> bool:
        return not self.is_enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """``LightningModule.print`` goes here: printed as is, in order with the progress lines."""
        if self.is_enabled:
            self._write(sep.join(str(arg) for arg in args))

    # --- output ----------------------------------------------------------------------------------------------------

    def _write(self, line: str) -> None:
        stream = sys.stdout if self.stream is None else self.stream
        if stream is None:  # pythonw, a closed stdout: nowhere to write
            return
        stream.write(line + "\n")
        stream.flush()

    def _emit(self, *parts: str) -> None:
        if self.is_enabled:
            self._write(f"{time.strftime('%H:%M:%S')} " + " | ".join(part for part in parts if part))

    def _metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, str]:
        shown = {}
        for key, value in self.get_metrics(trainer, pl_module).items():
            if key != "v_num" and (text := _metric(value)) is not None:
                shown[key] = text
        return shown

    @staticmethod
    def _join(metrics: Mapping[str, str]) -> str:
        return " ".join(f"{key}={value}" for key, value in metrics.items())

    # --- training --------------------------------------------------------------------------------------------------

    def _epoch_label(self, trainer: Trainer) -> str:
        max_epochs = trainer.max_epochs
        known = max_epochs is not None and max_epochs >= 0
        return f"epoch {trainer.current_epoch + 1}/{max_epochs}" if known else f"epoch {trainer.current_epoch + 1}"

    def _step_label(self, trainer: Trainer) -> str:
        max_steps = trainer.max_steps
        return (
            f"step {trainer.global_step}/{max_steps}" if max_steps and max_steps > 0 else f"step {trainer.global_step}"
        )

    def _remaining_fit_batches(self, trainer: Trainer, epoch_total: float, done_in_epoch: int) -> float:
        """Training batches until the fit stops at ``max_epochs`` or ``max_steps``, whichever comes first."""
        remaining = math.inf
        max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
        if max_epochs is not None and max_epochs >= 0 and math.isfinite(epoch_total):
            later_epochs = max(max_epochs - trainer.current_epoch - 1, 0)
            remaining = later_epochs * epoch_total + max(epoch_total - done_in_epoch, 0)
        if max_steps is not None and max_steps > 0:
            remaining = min(remaining, max(max_steps - trainer.global_step, 0) * trainer.accumulate_grad_batches)
        return remaining

    def _etas(self, trainer: Trainer, now: float, epoch_total: float, position: int) -> str:
        epoch = self._epoch
        assert epoch is not None
        etas = []
        if math.isfinite(epoch_total) and epoch.batches and epoch.busy > 0:
            etas.append(f"epoch {_duration(epoch.busy / epoch.batches * max(epoch_total - position, 0))}")
        remaining = self._remaining_fit_batches(trainer, epoch_total, position)
        if self._fit_start is not None and self._fit_batches and math.isfinite(remaining):
            etas.append(f"fit {_duration((now - self._fit_start) / self._fit_batches * remaining)}")
        return "ETA " + ", ".join(etas) if etas else ""

    def _elapsed(self, now: float) -> str:
        return f"elapsed {_duration(now - self._fit_start)}" if self._fit_start is not None else ""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start = _clock()
        self._fit_batches = 0
        epochs = f"{trainer.max_epochs} epochs" if trainer.max_epochs is not None and trainer.max_epochs >= 0 else ""
        steps = f"max {trainer.max_steps} steps" if trainer.max_steps and trainer.max_steps > 0 else ""
        batches = f"{_batches(self.total_train_batches)} per epoch"
        self._emit(f"train start: {', '.join(part for part in (epochs, steps, batches) if part)}")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch = _Meter(_clock())
        self._position = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._epoch is None:
            return
        now = _clock()
        self._epoch.count(now, _batch_size(batch))
        self._fit_batches += 1
        self._position = batch_idx + 1  # not the count: a fit resumed mid-epoch starts at a later batch
        if self._epoch.line_due(now, self.every_seconds):
            total = self.total_train_batches
            self._emit(
                f"train {self._epoch_label(trainer)} batch {self._position}/{_count(total)} "
                f"{self._step_label(trainer)}",
                self._epoch.rate(since_line=True, world_size=trainer.world_size),
                self._join(self._metrics(trainer, pl_module)),
                self._elapsed(now),
                self._etas(trainer, now, total, self._position),
            )
            self._epoch.printed(now)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._epoch is None:
            return
        now = _clock()
        total = self.total_train_batches
        # current_epoch is still this epoch's number here; the fit ETA counts the epochs after it.
        remaining = self._remaining_fit_batches(trainer, total, self._position)
        fit_eta = ""
        if self._fit_start is not None and self._fit_batches and math.isfinite(remaining):
            fit_eta = f"ETA fit {_duration((now - self._fit_start) / self._fit_batches * remaining)}"
        self._emit(
            f"train {self._epoch_label(trainer)} done: {self._position}/{_count(total)} batches "
            f"{self._step_label(trainer)}",
            self._epoch.rate(since_line=False, world_size=trainer.world_size),
            self._join(self._metrics(trainer, pl_module)),
            f"epoch {_duration(now - self._epoch.start)}",
            self._elapsed(now),
            fit_eta,
        )
        self._epoch = None

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        now = _clock()
        self._emit(f"train done: {self._step_label(trainer)}, {_batches(self._fit_batches)}", self._elapsed(now))
        self._fit_start = None

    # --- validation, test, predict ---------------------------------------------------------------------------------

    def _eval_loop(self, trainer: Trainer) -> tuple[str, Any]:
        label, batches = _EVAL_LOOPS[trainer.state.stage]
        return label, getattr(trainer, batches)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        label, batches = self._eval_loop(trainer)
        self._eval = _Meter(_clock())
        self._eval_total = _total(batches)
        self._eval_metrics = self._metrics(trainer, pl_module)
        self._emit(f"{label} start: {_batches(self._eval_total)}")

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, *indices: int
    ) -> None:
        if self._eval is None:
            return
        now = _clock()
        self._eval.count(now, _batch_size(batch))
        if self._eval.line_due(now, self.every_seconds):
            eta = ""
            if math.isfinite(self._eval_total) and self._eval.busy > 0:
                left = max(self._eval_total - self._eval.batches, 0)
                eta = f"ETA {_duration(self._eval.busy / self._eval.batches * left)}"
            self._emit(
                f"{self._eval_loop(trainer)[0]} batch {self._eval.batches}/{_count(self._eval_total)}",
                self._eval.rate(since_line=True, world_size=trainer.world_size),
                f"elapsed {_duration(now - self._eval.start)}",
                eta,
            )
            self._eval.printed(now)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._eval is None:
            return
        now = _clock()
        label = self._eval_loop(trainer)[0]
        # What this run produced: new or changed values, and those named after the stage (an unchanged val/acc).
        stem, before = label.split()[0].replace("sanity", "val"), self._eval_metrics
        produced = {
            key: value
            for key, value in self._metrics(trainer, pl_module).items()
            if before.get(key) != value or key.startswith(stem)
        }
        self._emit(
            f"{label} done in {_duration(now - self._eval.start)}: {_batches(self._eval.batches)}",
            self._eval.rate(since_line=False, world_size=trainer.world_size),
            self._join(produced),
        )
        self._eval = None
        if self._epoch is not None:  # validation inside an epoch: its time is not training time
            self._epoch.mark = now

    # Test and predict are reported like validation; the trainer's stage names the lines.
    on_test_start = on_predict_start = on_validation_start
    on_test_batch_end = on_predict_batch_end = on_validation_batch_end
    on_test_end = on_predict_end = on_validation_end


def progress_bar_callback(stream: TextIO | None = None) -> ProgressBar:
    """``RichProgressBar()`` when ``stream`` (default ``sys.stdout``) is a terminal, else ``LogProgressBar()``."""
    return RichProgressBar() if is_terminal(stream) else LogProgressBar(stream=stream)


def plain_for_log_files(callbacks: list[Any], stream: TextIO | None = None) -> list[Any]:
    """A copy of ``callbacks`` for output that is not a terminal (``stream``, default ``sys.stdout``): every
    ``RichProgressBar`` / ``TQDMProgressBar`` (and subclass) becomes a ``LogProgressBar``, and a
    ``RichModelSummary`` becomes Lightning's plain ``ModelSummary`` of the same depth (a Rich table pads every line
    to the console's width); other callbacks keep their place. On a terminal the copy is unchanged. A list without a
    progress bar gets none (Lightning then adds its default, a ``RichProgressBar``, unless
    ``enable_progress_bar=False``)."""
    if is_terminal(stream):
        return list(callbacks)

    def plain(callback: Any) -> Any:
        if isinstance(callback, (RichProgressBar, TQDMProgressBar)):
            return LogProgressBar(stream=stream)
        if isinstance(callback, RichModelSummary):
            return ModelSummary(max_depth=callback._max_depth)
        return callback

    return [plain(callback) for callback in callbacks]
