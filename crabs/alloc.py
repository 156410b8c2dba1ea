"""Keep freed memory in the process (glibc), so that the hot loops stop faulting pages in.

glibc's ``malloc`` serves a large block with its own ``mmap`` and hands it back to the OS when it
is freed, and trims the heap's top when it grows past a threshold. A training step frees and
allocates the same tensors every time (a minibatch's activations, a MALA step's (K, chains, 256)
hidden layers), so each step faults their pages in again and the kernel zeroes them: system time
near half of the total on the 10,000-chain pool (``../shared/notes/performance.md``).
:func:`keep_freed_memory` turns both off for the process (``mallopt(M_MMAP_MAX, 0)`` and
``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)``, the same as ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:
glibc.malloc.trim_threshold=...``): freed blocks stay with the process and are reused. It changes
no number a run computes, only where its memory comes from; a process then holds its peak memory
until it exits. Every run calls it (:meth:`crabs.runs.Runner.train`); ``CRABS_MALLOC=system`` in
the environment leaves the C library's behaviour alone. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_done = False


def keep_freed_memory() -> bool:
    """Once per process: glibc keeps freed memory (see the module's docstring). Returns whether
    the setting is in force (False: not Linux/glibc, or ``CRABS_MALLOC=system``)."""
    global _done
    if _done:
        return True
    if os.environ.get("CRABS_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):      # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _done
