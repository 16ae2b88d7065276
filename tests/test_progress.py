"""Progress output: a tqdm bar on a terminal only; a log file gets plain, periodic, carriage-return-free lines."""

from __future__ import annotations

import io

from taskprune.progress import PlainProgress, progress_bar


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_file_gets_periodic_plain_lines():
    out, clock = io.StringIO(), FakeClock()
    bar = PlainProgress(range(10), desc="train", unit="step", interval_s=30.0, stream=out, clock=clock)
    for step in bar:
        clock.t += 10.0  # 10 s per step: a line every third step, and one at the end
        bar.set_postfix(loss=f"{1.0 / (step + 1):.3f}")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("train: 3/10 step (30%), 30.0 s, 0.1 step/s")
    assert lines[-1] == "train: 10/10 step (100%), 100.0 s, 0.1 step/s, loss=0.100"
    assert len(lines) == 4  # at 30, 60, 90 s and the final line


def test_update_and_context_manager_and_silence():
    out = io.StringIO()
    with progress_bar(total=5, desc="generate", unit="prompt", stream=out) as bar:
        bar.update(2)
        bar.update(3)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("generate: 5/5 prompt (100%), ")
    quiet = io.StringIO()
    for _ in progress_bar(range(3), desc="x", enabled=False, stream=quiet):
        pass
    assert quiet.getvalue() == ""


def test_terminal_gets_a_tqdm_bar():
    term = Terminal()
    bar = progress_bar(range(3), desc="stats", unit="prompt", stream=term)
    assert not isinstance(bar, PlainProgress)
    list(bar)
    assert "\r" in term.getvalue() and "stats" in term.getvalue()
