"""Runtime environments (Ray's ``runtime_env``): what a job, task or actor needs on the worker
that runs it — its project's code (``working_dir``, ``py_modules``), environment variables
(``env_vars``) and packages (``pip``).

``spec``: checking a runtime_env and merging a child's over its parent's (the driver, before
anything runs). ``package``: a directory or module as a content-named zip, and unpacking it on
a node.
"""

from .spec import RuntimeEnvError, merge, validate

__all__ = ["RuntimeEnvError", "merge", "validate"]
