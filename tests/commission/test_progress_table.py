"""The progress bar (drawn only on a terminal, rate-limited, erased at the end) and the table formatter."""

from __future__ import annotations

import io

from gateway.commission.progress import Progress, render_bar
from gateway.commission.table import format_table


def test_render_bar() -> None:
    assert render_bar(0, 10, width=10, label="scan") == "scan [..........] 0/10"
    assert render_bar(5, 10, width=10) == "[#####.....] 5/10"
    assert render_bar(12, 10, width=4, note="unit 12") == "[####] 12/10  unit 12"
    assert render_bar(0, 0, width=4) == "[....] 0/0"


def test_progress_draws_on_a_terminal_and_erases_itself() -> None:
    out = io.StringIO()
    now = [0.0]
    with Progress(3, "scan", stream=out, enabled=True, width=3, min_interval_s=1.0, clock=lambda: now[0]) as bar:
        bar.advance(note="a")  # first draw
        bar.advance(note="b")  # within the interval: skipped
        now[0] = 0.5
        bar.advance(note="c")  # the last item always draws
    text = out.getvalue()
    assert "\rscan [#..] 1/3  a" in text
    assert "b" not in text.replace("\rscan", "")
    assert "\rscan [###] 3/3  c" in text
    assert text.endswith("\r")  # erased


def test_progress_is_silent_when_not_a_terminal() -> None:
    out = io.StringIO()  # isatty() is False
    with Progress(2, stream=out) as bar:
        bar.advance()
        bar.advance()
    assert out.getvalue() == ""


def test_table_aligns_numbers_right_and_text_left() -> None:
    text = format_table(["name", "value"], [["a", "1.5"], ["long name", "-20"]])
    assert text.splitlines() == [
        "name       value",
        "---------  -----",
        "a            1.5",
        "long name    -20",
    ]
