"""Fuzz tests: no processes, no sockets, no sleeps (like tests/unit)."""

import os
import tempfile

from hypothesis import configuration

# keep hypothesis' cache out of the repository checkout
configuration.set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "taskmesh-fuzz-hypothesis"))
