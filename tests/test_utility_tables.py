"""The utility benchmark's bookkeeping (benchmarks/utility.py, issue 26): which tasks the
draw groups run, and the peer table's margins, which say "beyond spread" only when every
draw of one row is above every draw of the other."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import utility  # noqa: E402


def row(method, eps, draws):
    n = len(draws)
    mean = sum(draws) / n
    std = (sum((a - mean) ** 2 for a in draws) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {"method": method, "epsilon": eps, "accuracy": mean, "std": std,
            "min": min(draws), "max": max(draws), "n_draws": n}


def test_accounted_group_runs_dpsgd_as_its_own_task():
    assert utility.draw_methods({"accounted"}) == ["accounted", "dp-sgd-tuning-accounted"]
    assert "dpsynth" not in utility.draw_methods({"peers", "accounted"})
    # a resumed log's rows count for the task that made them
    assert utility.task_of("dp-fc-tuning-accounted") == "accounted"
    assert utility.task_of("dp-sgd-tuning-accounted") == "dp-sgd-tuning-accounted"


@pytest.mark.parametrize("ours, other, verdict", [
    ([0.80, 0.81, 0.82], [0.77, 0.78, 0.79], "beyond spread"),
    ([0.80, 0.81, 0.82], [0.79, 0.80, 0.815], "within spread"),
    ([0.70, 0.71, 0.72], [0.75, 0.76, 0.77], "beyond spread"),
    ([0.80, 0.81, 0.82], [0.70], "1 draw"),
])
def test_margin_says_whether_the_draws_overlap(ours, other, verdict):
    diff, said = utility.margin(row("dpsynth", 1.0, ours), row("dp-merf", 1.0, other))
    assert said == verdict
    assert diff == pytest.approx(100 * (sum(ours) / len(ours) - sum(other) / len(other)))


def test_peer_table_has_a_column_per_drawn_eps_and_both_margins():
    rows = [row("dpsynth", 0.5, [0.79, 0.80, 0.80]), row("dpsynth", 1.0, [0.81, 0.81, 0.82]),
            row("dpsynth", 8.0, [0.84]),  # the full run's single draw: not a column
            row("dp-merf", 0.5, [0.72, 0.72, 0.73]), row("dp-merf", 1.0, [0.72, 0.71, 0.72]),
            row("dp-fc-tuning-accounted", 1.0, [0.83, 0.83, 0.84]),
            {**row("dpsynth-teacher-relabel", 1.0, [0.80, 0.81, 0.80]), "design": "x"}]
    assert utility.table_epsilons(rows) == (0.5, 1.0)
    lines = utility.peer_table(rows).splitlines()
    assert lines[0] == "| method | eps=0.5 | eps=1 |"
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| **dpsynth**", "| dp-merf", "| dp-fc-tuning-accounted",
        "| dpsynth-teacher-relabel", "| dpsynth - best peer synthesizer",
        "| dpsynth - best tuning-accounted baseline"]
    peer, accounted = lines[-2], lines[-1]
    assert peer.endswith("| +7.3 vs dp-merf (beyond spread) | +9.7 vs dp-merf (beyond spread) |")
    assert accounted.endswith("| - | -2.0 vs dp-fc-tuning-accounted (beyond spread) |")
    margins = utility.margin_table(rows).splitlines()
    assert margins[0] == "| dpsynth minus | eps 0.5 | eps 1 |"
    assert margins[2:] == ["| dp-merf | +7.3 (beyond) | +9.7 (beyond) |",
                           "| dp-fc-tuning-accounted | - | -2.0 (beyond) |",
                           "| dpsynth-teacher-relabel | - | +1.0 (within) |"]
