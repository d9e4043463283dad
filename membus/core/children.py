"""Child processes that must not outlive the process that started them."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGTERM) -> None:  # pragma: no cover - runs in the child
    """Have the kernel send ``sig`` to this process when its parent dies (Linux: PDEATHSIG;
    elsewhere nothing). Call it in the child: as a ``preexec_fn``, or first thing in ``main``."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)
