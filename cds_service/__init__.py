"""ketamine-cds: CDS Hooks 2.0 decision support for ketamine and esketamine in depression."""

from . import _accel

__version__ = "0.1.0"

# Before any submodule: a compiled module runs only while its source is the one it was built from.
_accel.install()
