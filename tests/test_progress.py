"""LogProgressBar: plain progress lines for logs, on a tiny model whose steps advance a fake clock."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    ProgressBar,
    RichModelSummary,
    RichProgressBar,
    TQDMProgressBar,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import progress
from callbacks.progress import LogProgressBar, plain_for_log_files, progress_bar_callback

STEP_SECONDS = 7.0  # fake seconds each training / evaluation step takes
BATCH = 4
TRAIN_BATCHES = 16


class FakeClock:
    """Stands in for time.monotonic in callbacks.progress; only the model's steps move it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Ticking(L.LightningModule):
    """A linear classifier on random tensors whose every step takes STEP_SECONDS on the fake clock."""

    def __init__(self, clock: FakeClock, eval_ticks: bool = False) -> None:
        super().__init__()
        self.clock = clock
        self.eval_ticks = eval_ticks
        self.layer = nn.Linear(8, 3)

    def _loss_acc(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self.layer(x)
        return nn.functional.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.clock.now += STEP_SECONDS
        loss, _ = self._loss_acc(batch)
        self.log("loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.clock.now += STEP_SECONDS if self.eval_ticks else 0.0
        self.log("val/acc", self._loss_acc(batch)[1], prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.clock.now += STEP_SECONDS if self.eval_ticks else 0.0
        self.log("test/acc", self._loss_acc(batch)[1], prog_bar=True)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.clock.now += STEP_SECONDS if self.eval_ticks else 0.0
        return self.layer(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(batches: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batches * BATCH, 8, generator=generator)
    y = torch.randint(0, 3, (batches * BATCH,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


def trainer(bar: ProgressBar, **kwargs: object) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar],
        **kwargs,
    )


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(progress, "_clock", fake)
    return fake


def progress_lines(text: str, prefix: str) -> list[str]:
    """The bar's lines (``HH:MM:SS <prefix>...``) without their time stamp."""
    lines = [line[9:] for line in text.splitlines() if re.match(r"\d\d:\d\d:\d\d ", line)]
    return [line for line in lines if line.startswith(prefix)]


def interval_batches(lines: list[str], epoch: int) -> list[int]:
    pattern = re.compile(rf"train epoch {epoch}/\d+ batch (\d+)/")
    return [int(match.group(1)) for line in lines if (match := pattern.match(line))]


def test_fit_prints_training_and_validation_lines(clock: FakeClock, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    bar = LogProgressBar(every_seconds=20.0)
    fit = trainer(bar, max_epochs=2, num_sanity_val_steps=1)
    assert fit.progress_bar_callback is bar  # Lightning takes it as the progress bar (enable_progress_bar=True)
    fit.fit(Ticking(clock), loader(TRAIN_BATCHES), loader(2))
    out = capsys.readouterr().out
    assert "\x1b" not in out and "[bold" not in out  # plain text, no rich markup or colours

    train = progress_lines(out, "train ")
    # 7 s per step, a line once 20 s have passed since the last one: batches 3, 6, 9, 12, 15 of each epoch.
    assert interval_batches(train, 1) == [3, 6, 9, 12, 15]
    assert interval_batches(train, 2) == [3, 6, 9, 12, 15]
    first = next(line for line in train if line.startswith("train epoch 1/2 batch 3/16"))
    parts = first.split(" | ")
    assert parts[0] == "train epoch 1/2 batch 3/16 step 3"
    assert parts[1] == "0.5714 samples/s"  # 3 batches of 4 samples in 21 s
    assert re.fullmatch(r"loss=\d+\.\d+", parts[2]), parts
    assert parts[3] == "elapsed 0:00:21"
    # 13 batches left in the epoch, 29 in the fit, 7 s each.
    assert parts[4] == "ETA epoch 0:01:31, fit 0:03:23"
    later = next(line for line in train if line.startswith("train epoch 2/2 batch 9/16"))
    assert "step 25 " in later and "elapsed 0:02:55" in later and later.endswith("ETA epoch 0:00:49, fit 0:00:49")

    ends = [line for line in train if line.startswith("train epoch") and " done: " in line]
    assert len(ends) == 2, train
    assert ends[0].startswith("train epoch 1/2 done: 16/16 batches step 16 | 0.5714 samples/s | loss=")
    assert "val/acc=" in ends[0] and "epoch 0:01:52 | elapsed 0:01:52 | ETA fit 0:01:52" in ends[0]
    assert ends[1].startswith("train epoch 2/2 done: 16/16 batches step 32") and "ETA fit 0:00:00" in ends[1]
    assert progress_lines(out, "train start: ") == ["train start: 2 epochs, 16 batches per epoch"]
    assert progress_lines(out, "train done: ") == ["train done: step 32, 32 batches | elapsed 0:03:44"]

    val = progress_lines(out, "val ")
    assert val.count("val start: 2 batches") == 2  # after each epoch
    val_ends = [line for line in val if line.startswith("val done in 0:00:00: 2 batches")]
    assert len(val_ends) == 2 and all("val/acc=" in line for line in val_ends), val
    assert progress_lines(out, "sanity check start: ") == ["sanity check start: 1 batch"]
    # Lines come in order: the epoch's summary after its validation (Lightning validates before the epoch ends).
    kinds = [line.split(" ")[0] for line in progress_lines(out, "") if " done" in line and "sanity" not in line]
    assert kinds == ["val", "train", "val", "train", "train"]  # the last is "train done"


@pytest.mark.parametrize(
    ("every_seconds", "expected"),
    [(0.0, list(range(1, 17))), (10.0, [2, 4, 6, 8, 10, 12, 14, 16]), (20.0, [3, 6, 9, 12, 15]), (45.0, [7, 14])],
)
def test_every_seconds_sets_the_interval(
    clock: FakeClock, capsys: pytest.CaptureFixture[str], every_seconds: float, expected: list[int]
) -> None:
    fit = trainer(LogProgressBar(every_seconds=every_seconds), max_epochs=1, limit_val_batches=0)
    fit.fit(Ticking(clock), loader(TRAIN_BATCHES))
    assert interval_batches(progress_lines(capsys.readouterr().out, "train "), 1) == expected


def test_validate_test_predict_lines(clock: FakeClock, capsys: pytest.CaptureFixture[str]) -> None:
    bar = LogProgressBar(every_seconds=20.0)
    model = Ticking(clock, eval_ticks=True)
    runner = trainer(bar)
    runner.validate(model, loader(8), verbose=False)
    runner.test(model, loader(2), verbose=False)
    runner.predict(model, loader(1))
    lines = progress_lines(capsys.readouterr().out, "")
    assert lines[0] == "val start: 8 batches"
    assert lines[1] == "val batch 3/8 | 0.5714 samples/s | elapsed 0:00:21 | ETA 0:00:35"
    assert lines[2] == "val batch 6/8 | 0.5714 samples/s | elapsed 0:00:42 | ETA 0:00:14"
    assert lines[3].startswith("val done in 0:00:56: 8 batches | 0.5714 samples/s | val/acc=")
    assert lines[4] == "test start: 2 batches"
    assert lines[5].startswith("test done in 0:00:14: 2 batches | 0.5714 samples/s | test/acc=")
    # test/acc is unchanged and not named after predict, so the predict line shows no metrics.
    assert lines[6:] == ["predict start: 1 batch", "predict done in 0:00:07: 1 batch | 0.5714 samples/s"]


def test_only_rank_zero_prints(capsys: pytest.CaptureFixture[str]) -> None:
    bar = LogProgressBar(stream=None)
    bar.print("rank zero line")
    bar.setup(SimpleNamespace(is_global_zero=False), None, "fit")  # type: ignore[arg-type]
    bar.print("other rank line")
    bar.enable()  # Lightning re-enables bars after the LR finder; a non-zero rank still stays silent
    bar.print("other rank, enabled")
    assert capsys.readouterr().out == "rank zero line\n"
    assert bar.is_disabled


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_callback_follows_the_stream(capsys: pytest.CaptureFixture[str]) -> None:
    assert type(progress_bar_callback(FakeTerminal())) is RichProgressBar
    log_bar = progress_bar_callback(io.StringIO())
    assert type(log_bar) is LogProgressBar
    assert type(progress_bar_callback()) is LogProgressBar  # capsys: stdout is not a terminal


def test_plain_for_log_files_swaps_exactly_the_progress_bars_and_rich_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    class CustomRich(RichProgressBar):
        pass

    class OwnBar(ProgressBar):
        pass

    checkpoint, monitor, own, log_bar = ModelCheckpoint(), LearningRateMonitor(), OwnBar(), LogProgressBar()
    callbacks = [checkpoint, RichProgressBar(), monitor, TQDMProgressBar(), CustomRich(), own, log_bar]
    callbacks.append(RichModelSummary(max_depth=3))
    before = list(callbacks)

    swapped = plain_for_log_files(callbacks)  # stdout is captured, so not a terminal
    assert callbacks == before  # the given list is left alone
    assert [type(callback) for callback in swapped] == [
        ModelCheckpoint,
        LogProgressBar,
        LearningRateMonitor,
        LogProgressBar,
        LogProgressBar,
        OwnBar,
        LogProgressBar,
        ModelSummary,  # Rich's summary pads every line to the console's width
    ]
    assert swapped[-1]._max_depth == 3
    assert swapped[0] is checkpoint and swapped[2] is monitor and swapped[5] is own and swapped[6] is log_bar

    on_terminal = plain_for_log_files(callbacks, stream=FakeTerminal())
    assert on_terminal == before and on_terminal is not callbacks
    assert plain_for_log_files([checkpoint]) == [checkpoint]  # no bar: none added
