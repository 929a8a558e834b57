# LiteLLM 1.84-1.93 load a callback named in config.yaml only from a .py file beside it: put this
# file there and name `success_callback: ["akto_callbacks.akto_callback"]` (and failure_callback).
# 1.81-1.83 and 1.94+ take `akto_hook.akto_callback` as it is; 1.94+ take this file too.
from akto_hook import akto_callback as akto_callback
