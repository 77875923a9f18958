"""The one exception type for mistakes a user can cause.

Bad configuration, impossible bounds, a missing or corrupt dataset: all raise
:class:`StllrError` with a message that names the file or key and says how to fix
it. The ``stllr`` command prints such errors as a single line and exits non-zero.
Bugs are not wrapped: they still raise ordinary tracebacks.
"""

from __future__ import annotations


class StllrError(Exception):
    """A user-facing error: one line saying what is wrong and how to fix it."""
