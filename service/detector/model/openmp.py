"""Make torch's OpenMP threads sleep instead of spin between parallel regions (set before torch)."""

from __future__ import annotations

import os
import sys

# libgomp spin-waits between parallel regions by default. On a machine shared with other
# workers (or other processes) the spinning thread burns the timeslice its partner needs:
# measured on a loaded 2-core VM, yolov3-tiny torch-bf16 median 190 ms spinning, 53 ms passive;
# on an idle machine passive costs a few microseconds per region. libgomp reads the variable
# once when torch loads, so this module is imported before anything imports torch; a value
# already in the environment (systemd unit, shell) wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
TORCH_LOADED_FIRST = "torch" in sys.modules  # then the setting came too late for this process
