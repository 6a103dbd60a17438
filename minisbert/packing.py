"""Deprecated alias of minisbert.fast.packing (and `disabled()` of minisbert.fast), kept for one release.

Not a module of the package: nothing in minisbert imports it.
"""

import warnings

from .fast import disabled  # noqa: F401
from .fast import packing as _moved

warnings.warn("minisbert.packing moved to minisbert.fast.packing (the switch: minisbert.fast.disabled()); "
              "this alias goes in the next release", DeprecationWarning, stacklevel=2)


def __getattr__(name):
    return getattr(_moved, name)
