"""The installed transformers' version, for the few places whose behaviour follows it.

Its own module, imported by backbone.py, bert.py and tokenizer.py alike, so that none of them imports
another just for this.
"""

from __future__ import annotations

from importlib import metadata


def transformers_version() -> tuple[int, int]:
    """(major, minor) of the installed transformers, read without importing it (that import takes ~1 s)."""
    major, minor = (int(part) for part in metadata.version("transformers").split(".")[:2])
    return major, minor
