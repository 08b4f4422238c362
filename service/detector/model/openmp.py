"""Set OpenMP's wait policy (spin or sleep) by the process's thread layout, before torch loads."""

from __future__ import annotations

import os
import sys

from .. import sizing

# libgomp spin-waits between parallel regions by default. On a machine shared with other
# workers (or other processes) the spinning thread burns the timeslice its partner needs:
# measured on a loaded 2-core VM, yolov3-tiny torch-bf16 median 190 ms spinning, 53 ms passive;
# on an idle machine passive costs a few microseconds per region. libgomp reads the variable
# once when torch loads, so this module is imported before anything imports torch; a value
# already in the environment (systemd unit, shell) wins.
# Which policy is measured per layout (sizing.omp_wait_policy): the unit sets OMP_NUM_THREADS
# to the worker's share; a CLI run has none (every core).
_threads = os.environ.get("OMP_NUM_THREADS", "")
os.environ.setdefault(
    "OMP_WAIT_POLICY", sizing.omp_wait_policy(int(_threads) if _threads.isdigit() else 0)
)
TORCH_LOADED_FIRST = "torch" in sys.modules  # then the setting came too late for this process
