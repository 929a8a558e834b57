"""The recording path: one Redis write per record after the response (``enqueue.py``), grouped
(``writer.py``) over a kept connection (``rpush.py``), with a local spool (``spool.py``) and the
breaker that replays it (``recovery.py``); background loops that cannot die silently
(``supervise.py``)."""
