"""The inline verdicts (block mode): the check and its fallback (``check.py``), Akto's masks
(``masking.py``), the opt-in response check (``response_check.py``) and file check
(``file_check.py``), and what LiteLLM's logging is told of each (``reporting.py``)."""
