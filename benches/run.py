#!/usr/bin/env python3
"""Side-by-side macro benchmark: node-proxy vs haproxy vs nginx vs no proxy.

    python3 benches/run.py [--quick] [--reps N] [--contenders direct,node-proxy,haproxy,nginx]
                           [--out benches/RESULTS.md]

See benches/README.md for what it measures and how to read the report.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
