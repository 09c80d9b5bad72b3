"""Errors a person can act on, and how ``labquake`` tells them from bugs.

Code below the CLI raises these for bad input; ``labquake_tf.cli.main`` turns
them into one line on stderr and an exit status, where an unexpected exception
(a bug) keeps its traceback. Both subclass ``ValueError`` so callers that catch
``ValueError`` keep working.

- ``DataError`` (exit 1): a file or record that cannot serve the request. Name
  the file, and the row / column / dataset where there is one.
- ``UsageError`` (exit 2): an option value that argparse could not check, e.g.
  a ``--split`` string or a ``--targets`` list. Name the option.
"""

import numbers


class LabquakeError(Exception):
    """A user error: the message is all the user needs, no traceback."""

    exit_code = 1


class DataError(LabquakeError, ValueError):
    """Bad input data: a record, manifest, model file or export."""

    exit_code = 1


class UsageError(LabquakeError, ValueError):
    """A bad option value (exit status 2, as argparse uses)."""

    exit_code = 2


def row_text(n):
    """``1502`` → ``'1,502'``: row numbers as people read them."""
    return f"{n:,}" if isinstance(n, numbers.Integral) else str(n)


def more_text(n_more, what="value"):
    """``' (and 3 more bad values)'``, or nothing when the first is the only one."""
    if n_more <= 0:
        return ""
    return f" (and {row_text(n_more)} more bad {what}{'' if n_more == 1 else 's'})"
