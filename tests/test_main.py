"""The demo, run as a user runs it: ``python -m pescador_fp``."""

from __future__ import annotations

import os
import subprocess
import sys

DEMO_TIMEOUT_S = 120


def test_demo_runs_and_reports_throughput():
    result = subprocess.run(
        [sys.executable, "-m", "pescador_fp", "--files", "4", "--rows", "500", "--epochs", "2"],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "wrote 8 .npy files" in out
    # 2 000 rows an epoch: 31 batches of 64, as without background (issue 20: no worker drops its rest)
    assert "streamed 3,968 samples in 62 batches of 64 over 2 epochs" in out
    assert "samples/s" in out and "a new, reproducible order each epoch" in out
    assert "epoch 2/2" in result.stderr  # progress was shown
    assert "its state saved (" in out and "resumed: the other 16 batches" in out
    assert "the same as an uninterrupted pass" in out and "NOT the same" not in out
    assert "where the time goes: background(workers=2)" in out or "where the time goes: progress" in out
