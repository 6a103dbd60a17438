"""Every error minisbert raises on purpose, in one place; each message names the flag, file or folder and the fix.

    ValueError   bad input: ConfigError (a setting), DataError (a data file), ModelLoadError (a model folder)
    RuntimeError NonFiniteLoss (a diverged run)
    OSError      SaveError (a write that failed: disk full, permissions)
    KeyboardInterrupt  Interrupted (Ctrl-C during train.py)

train.py's exit status follows the base class: 2 for a ValueError, 1 for the others, 130 for Ctrl-C.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A training setting that cannot work; the message names the flag (or file, row) and the fix."""


class DataError(ValueError):
    """Bad training data or data settings; the message names the file, line and column."""


class ModelLoadError(ValueError):
    """A model folder or name that cannot be loaded; the message names the folder and the fix."""


class NonFiniteLoss(RuntimeError):
    """The loss or the gradient became NaN/inf; the message names the step and the last good checkpoint."""


class SaveError(OSError):
    """A checkpoint or model folder could not be written (disk full, permissions); the message names the
    folder and the last complete checkpoint, which the failed save left untouched."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT): the message says where the last checkpoint is and how to resume (still a
    KeyboardInterrupt for code that calls train.main)."""
