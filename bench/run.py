"""`make bench`: the model table, then the serving table; BENCH_QUICK=1 for a shorter run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from bench import model_bench

RESULTS = Path(__file__).resolve().parent / "results.md"


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark section, print the report and write it to bench/results.md."""
    argv = sys.argv[1:] if argv is None else argv
    report = "## Model\n\n" + model_bench.main(argv)
    print(report, flush=True)
    if importlib.util.find_spec("bench.serving_bench") is not None:
        from bench import serving_bench

        serving = serving_bench.main()  # prints its own table; may also return it as text
        if isinstance(serving, str) and serving:
            report += "\n## Serving\n\n" + serving
    RESULTS.write_text("# Benchmark results (`make bench`)\n\n" + report)
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
