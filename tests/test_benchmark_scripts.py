"""The benchmark scripts kept in tests/benchmarks run, on small sizes.

They are run by hand for figures (see tests/benchmarks/README.md); these
tests only keep them working as the code under them changes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).with_name("benchmarks")


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_floor_pipeline_reports_a_rate_per_round():
    out = run("floor_pipeline.py", "--jobs", "300", "--repeat", "2")
    rounds = re.findall(r"round \d: ([\d,]+) jobs/s, (\d+) us CPU per job", out)
    assert len(rounds) == 2 and all(int(rate.replace(",", "")) > 0 for rate, _ in rounds)


def test_profile_burst_reports_statements_calls_and_the_serial_round():
    out = run("profile_burst.py", "--jobs", "300")
    assert "statements per job" in out and "calls per job" in out
    if hasattr(time, "pthread_getcpuclockid"):  # per-thread CPU clocks (not on macOS)
        by_thread = dict(re.findall(r"(pjcore-[a-z-]+) ([\d,]+) us", out))
        assert "pjcore-scheduler" in by_thread and "pjcore-run" in by_thread, out[:1000]
    serial = re.search(r"total\s+([\d.]+)\s+= ([\d,]+) jobs/s", out)
    assert serial and float(serial.group(1)) > 0, out[-2000:]


def test_run_history_reports_a_claim_round_and_a_lease_sweep_per_history_size():
    out = run("run_history.py", "--jobs", "3", "--history", "0", "200", "--repeat", "3")
    rows = re.findall(r"history\s+([\d,]+) runs per job: claim round\s+([\d.]+) ms, "
                      r"lease sweep\s+([\d.]+) ms, a job's failed runs\s+([\d.]+) ms", out)
    assert [row[0] for row in rows] == ["0", "200"], out
    assert all(float(ms) > 0 for row in rows for ms in row[1:])
