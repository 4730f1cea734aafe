"""Notebooks run in the test suite (``pytest --nbmake``) with small settings and logs in a temporary folder.

A notebook reads ``GEO_NOTEBOOK_STEPS`` (training steps per run) and ``GEO_NOTEBOOK_LOGS`` (TensorBoard root);
run by hand, it uses its own, larger defaults.
"""

import os
import tempfile

os.environ.setdefault("GEO_NOTEBOOK_STEPS", "60")
os.environ.setdefault("GEO_NOTEBOOK_LOGS", tempfile.mkdtemp(prefix="geo_notebooks_"))
