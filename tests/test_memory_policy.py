"""retain_freed_memory: freed memory stays with the process for reuse, only when asked, and the gfbench command
asks for it. Each measurement runs in its own interpreter: the setting is process-wide and cannot be undone."""

from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner

import gfbench.cli as cli

ALLOCATE_AND_FREE = """
import numpy as np
from gfbench.methods.core.memory import retain_freed_memory

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

applied = retain_freed_memory()
before = rss_mb()
block = np.ones(160 << 17)  # 160 MiB, far above glibc's default mmap threshold
block = None
print(applied, round(rss_mb() - before))
"""


def megabytes_kept_after_free(retain: str) -> tuple[bool, int]:
    env = {**os.environ, "GFBENCH_RETAIN_FREED_MEMORY": retain}
    out = subprocess.run([sys.executable, "-c", ALLOCATE_AND_FREE], env=env, capture_output=True, text=True,
                         check=True)
    applied, kept = out.stdout.split()
    return applied == "True", int(kept)


def test_freed_memory_stays_with_the_process_only_when_retained():
    applied, kept = megabytes_kept_after_free("1")
    assert applied and kept >= 150
    applied, kept = megabytes_kept_after_free("0")  # glibc's default: the block goes back to the OS
    assert not applied and kept < 10


def test_the_gfbench_command_retains_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: calls.append(True) or True)
    result = CliRunner().invoke(cli.main, ["ls", "suites"])
    assert result.exit_code == 0, result.output
    assert calls == [True]
