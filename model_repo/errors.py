"""The one exception the builder raises for anything the user can fix."""

from __future__ import annotations


class BuildError(Exception):
    """A checkpoint, source or option the builder cannot turn into a repository.

    The message is shown to the user as is, so it names the problem and the accepted choices.
    """
