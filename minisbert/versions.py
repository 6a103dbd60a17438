"""The installed transformers' version, for the few places whose behaviour follows it.

Its own module, imported by backbone.py, bert.py and tokenizer.py alike, so that none of them imports
another just for this.
"""

from __future__ import annotations

import importlib.metadata


def transformers_version() -> tuple[int, int]:
    """(major, minor) of the installed transformers, read without importing it (looked up at each call, so a
    test can stand in another version)."""
    major, minor = (int(part) for part in importlib.metadata.version("transformers").split(".")[:2])
    return major, minor
