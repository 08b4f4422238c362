"""Where the test bed keeps its cache and the state of each running bed."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR = Path(os.environ.get("DETECTOR_TESTBED_CACHE", "/var/cache/detector-testbed"))
STATE_ROOT = Path(os.environ.get("DETECTOR_TESTBED_STATE", "/var/lib/detector-testbed"))
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
