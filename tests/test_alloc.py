"""crabs.alloc.keep_freed_memory: freed memory stays with the process (glibc), unless opted out."""

import os
import subprocess
import sys

import pytest

PROBE = """
import sys
import numpy as np
from crabs.alloc import keep_freed_memory

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

on = keep_freed_memory()
base = rss_mb()
x = np.ones(64 * 2**20 // 8)        # 64 MB, touched
del x
print(on, rss_mb() - base)
"""


def probe(**env) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, check=True,
                         capture_output=True, text=True).stdout.split()
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_block_stays_with_the_process_and_opt_out_restores_glibc():
    on, kept = probe(CRABS_MALLOC="")
    assert on and kept > 48            # the 64 MB block was not handed back to the OS
    off, kept_off = probe(CRABS_MALLOC="system")
    assert not off and kept_off < 16   # glibc's own behaviour: a large block is unmapped on free


def test_every_run_sets_it(tmp_path, monkeypatch):
    import crabs.runs

    calls = []
    monkeypatch.setattr(crabs.runs, "keep_freed_memory", lambda: calls.append(1))

    class Probe(crabs.runs.Runner):
        algorithm = "crabs"

        @classmethod
        def open(cls, *a, **k):
            return crabs.runs.RunDir(tmp_path), None, None, None

        def __init__(self, *a, **k):
            pass

        def run(self):
            return {"probe": calls[:]}

        def make_plots(self):
            pass

    assert Probe.train("upright", out=tmp_path) == {"probe": [1]}
