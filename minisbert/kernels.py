"""Deprecated alias of minisbert.fast.kernels, kept for one release. It is the same module object, so
`minisbert.kernels.portable()` and settings made through it act on the kernels the package uses.

Not a module of the package: nothing in minisbert imports it.
"""

import sys
import warnings

from .fast import kernels as _moved

warnings.warn("minisbert.kernels moved to minisbert.fast.kernels; this alias goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
