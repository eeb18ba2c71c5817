"""One exception type for mistakes a user can fix.

Anything raised as StlmError is printed by the CLI as a single paragraph and exits
with status 2; anything else is a bug and keeps its traceback.
"""


class StlmError(Exception):
    """A user-facing error: bad config key, missing file, infeasible budget, ..."""
