"""The one exception for mistakes a user can fix (a bad flag, a missing file, an invalid spec).

The CLI prints a ``UserError`` as one line (``mnv4 CMD: error: ...``) and exits 2; every other exception keeps its
traceback, because it is a bug or an environment failure (CUDA out of memory, a broken install) that the user has to
see in full. It subclasses ``ValueError`` so library callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: the message says what was wrong and what to do instead."""
