"""`python -m stlm.sweep SWEEP [key=value ...] [--dry-run] [--resume] ...`: the driver (run/driver.py)."""

import sys

from stlm.errors import run_main
from stlm.sweep.run.driver import main

if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
