"""The one error base of mvcap.

Every error the library raises for a problem the user can fix (a bad file, a bad setting, a
frame range outside the session, a missing dependency) is an :class:`MvcapError`; its message
is one line saying what is wrong and how to fix it. The ``mvcap`` command prints such an error
as ``error: <message>``; anything else reaching it is a bug in mvcap (see :mod:`mvcap.cli`).

It derives from ``ValueError`` so that code catching ``ValueError`` for bad input keeps working.
"""

from __future__ import annotations

__all__ = ["MvcapError"]


class MvcapError(ValueError):
    """A problem with the user's input, files or setup; the message says how to fix it."""
