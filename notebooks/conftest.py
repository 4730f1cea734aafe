"""Notebooks run in the test suite (``pytest --nbmake``) with small settings and logs in a temporary folder.

A notebook reads ``GEO_NOTEBOOK_STEPS`` (training steps per run) and ``GEO_NOTEBOOK_LOGS`` (TensorBoard root);
run by hand, it uses its own, larger defaults.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("GEO_NOTEBOOK_STEPS", "60")
if "GEO_NOTEBOOK_LOGS" not in os.environ:
    _logs = tempfile.mkdtemp(prefix="geo_notebooks_")
    os.environ["GEO_NOTEBOOK_LOGS"] = _logs
    atexit.register(shutil.rmtree, _logs, ignore_errors=True)  # the logs of a test session go with it
