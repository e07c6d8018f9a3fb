"""Moved to ``whitebox.data`` (sources, transforms, the seeded wrapper, the sampler, the loader); this
module keeps the old import path working."""

from whitebox.data import *  # noqa: F403
from whitebox.data import __all__  # noqa: F401
