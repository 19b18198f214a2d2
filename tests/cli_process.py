"""Run ``spanpulse`` as the operator does: a separate process (exit codes, stderr, signals)."""

from __future__ import annotations

import subprocess
import sys

CLI = (sys.executable, "-m", "spanpulse.cli")


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run one command to completion; stdout and stderr captured as text."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def start_cli(*args: str, text: bool = False) -> subprocess.Popen:  # type: ignore[type-arg]
    """Start one command in the background with stdout and stderr piped."""
    return subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """The failure shape of a bad flag or config: exit ``code``, one stderr line, no traceback."""
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert all(w in proc.stderr for w in words) and "Traceback" not in proc.stderr, proc.stderr
