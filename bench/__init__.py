"""Benchmarks for akto-litellm-ingest (``make bench`` / ``python -m bench``).

Importing the hook imports LiteLLM, which otherwise spends seconds at import and at exit retrying a
price-list download this machine cannot make.
"""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
