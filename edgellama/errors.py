"""The one exception type users see.

Anything raised as EdgeLlamaError is printed by the CLI as a single line, prefixed
with the file or field it concerns, and the process exits non-zero. Everything else
is a bug and keeps its traceback.
"""


class EdgeLlamaError(Exception):
    """A problem with the user's input or environment, explained in one line."""
