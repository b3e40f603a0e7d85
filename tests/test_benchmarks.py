"""`benchmarks/fit_overhead.py`: its interval, and a short run end to end."""
import argparse
import importlib.util
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fit_overhead.py"


def load():
    spec = importlib.util.spec_from_file_location("fit_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_median_interval_counts_the_spread_between_processes():
    bench = load()
    assert bench.median_interval([[1.5] * 5, [1.5] * 7]) == (1.5, 1.5)
    tight = [[1.00, 1.01, 1.02, 1.01, 1.00]] * 4            # four processes that agree
    apart = [[x + shift for x in tight[0]] for shift in (-0.1, 0.0, 0.05, 0.1)]
    low_t, high_t = bench.median_interval(tight)
    low_a, high_a = bench.median_interval(apart)
    assert low_t <= statistics.median(sum(tight, [])) <= high_t
    assert high_a - low_a > 3 * (high_t - low_t)           # disagreement widens it


def test_a_short_run_in_two_processes_prints_the_ratio():
    out = subprocess.run([sys.executable, str(SCRIPT), "--epochs", "1", "--repeats", "2",
                          "--processes", "2", "--hidden", "8"], capture_output=True,
                         text=True, check=True, timeout=300).stdout
    assert out.count("process ") >= 2 and "identical weights and losses" in out
    match = re.search(r"ratio fit/hand-written: (\d+\.\d\d) \(95% interval "
                      r"(\d+\.\d\d)-(\d+\.\d\d) over 4 pairs in 2 processes\)", out)
    assert match, out
    ratio, low, high = map(float, match.groups())
    assert 0 < low <= high and 0 < ratio


def test_instruction_counts_are_read_from_callgrinds_log():
    bench = load()
    log = "==1== Events    : Ir\n==1== Collected : 488775016\n==1==\n==1== I   refs: 488,775,016"
    assert bench.collected(log) == 488775016
    with pytest.raises(RuntimeError, match="no instruction count"):
        bench.collected("==1== valgrind: could not start")


def test_counting_without_valgrind_says_what_is_missing(monkeypatch):
    bench = load()
    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="needs valgrind"):
        bench.count_instructions(argparse.Namespace(epochs=1, batch_size=64, hidden=8,
                                                    threads=1))


def test_the_counted_run_trains_each_loop_once():
    """What callgrind counts: ``--count`` runs one loop (outside valgrind here)."""
    lines = [subprocess.run([sys.executable, str(SCRIPT), f"--count={loop}", "--epochs", "1",
                             "--hidden", "8"], check=True, timeout=300, capture_output=True,
                            text=True).stdout.strip() for loop in ("hand", "fit")]
    assert [line.split(",")[0] for line in lines] == ["hand: 23 steps", "fit: 23 steps"]
    assert lines[0].split(",")[1] == lines[1].split(",")[1]     # the same last loss
