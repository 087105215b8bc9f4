"""Progress off a terminal: plain lines, at most one per interval, and one at the end."""
from __future__ import annotations

import io

from tqdm import tqdm

from gentron.progress import LogLines, progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_lines_are_plain_and_rate_limited():
    stream, clock = io.StringIO(), Clock()
    bar = LogLines(desc="train cell abc", total=7000, initial=1000, unit="step", disable=False, stream=stream,
                   every=30.0, clock=clock)
    for _ in range(480):  # 480 steps over 60 s at 8 steps/s: two intervals pass
        clock.now += 0.125
        bar.update(1)
    bar.set_postfix(loss="0.4123")
    bar.close()
    bar.close()  # a second close writes nothing
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, lines  # at 30 s, at 60 s, and the end
    assert lines[0] == "train cell abc: step 1240/7000 (18%), 8 steps/s, eta 12 min"
    assert lines[1] == "train cell abc: step 1480/7000 (21%), 8 steps/s, eta 12 min"
    assert lines[2] == "train cell abc: step 1480/7000 (21%), 8 steps/s, took 60 s, loss=0.4123"
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


def test_progress_wraps_an_iterable_and_picks_tqdm_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(progress(range(3), desc="x", stream=Terminal()), tqdm)
    stream = io.StringIO()
    items = list(progress(["a", "b", "c"], desc="sampling cell", unit="batch", stream=stream, every=0.0))
    assert items == ["a", "b", "c"]
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("sampling cell: batch 1/3 (33%), ") and "batches/s" in lines[0]
    assert lines[-1].startswith("sampling cell: batch 3/3 (100%), ") and "took" in lines[-1]
    quiet = io.StringIO()
    list(progress(range(5), desc="hidden", stream=quiet, every=0.0, disable=True))
    assert quiet.getvalue() == ""


def test_training_off_a_terminal_writes_plain_progress_lines(tmp_path, capsys, monkeypatch):
    """gentron.train's loop reports through gentron.progress: with stderr captured (not a terminal)
    it writes plain lines naming the step, not bar redraws."""
    from gentron.train import train

    monkeypatch.setenv("GENTRON_PROGRESS_EVERY", "0")
    train({"train": {"steps": 3, "batch_size": 4, "log_every": 1, "ckpt_every": 3}, "data": {"num_train": 8},
           "model": {"depth": 1, "hidden_size": 24, "mlp_hidden_size": 48, "num_heads": 2}}, tmp_path / "run")
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if line.startswith("train run: step ")]
    assert [line.split(",")[0] for line in steps] == ["train run: step 1/3 (33%)", "train run: step 2/3 (67%)",
                                                      "train run: step 3/3 (100%)", "train run: step 3/3 (100%)"]
    assert "\r" not in err
