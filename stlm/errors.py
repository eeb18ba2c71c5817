"""One exception type for mistakes a user can fix.

Anything raised as StlmError is printed by the CLI as a single paragraph and exits
with status 2 (run_main); anything else is a bug and keeps its traceback.
"""

import sys


class StlmError(Exception):
    """A user-facing error: bad config key, missing file, infeasible budget, ..."""


def run_main(main, argv: list[str]) -> int:
    """Call a command's main(argv); user errors become one paragraph and exit status 2."""
    try:
        return int(main(argv) or 0)
    except StlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
