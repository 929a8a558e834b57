# LiteLLM 1.81-1.93 load a guardrail class only from a .py file beside config.yaml: put this file
# there and name `guardrail: akto_guardrail.AktoGuardrail`. Later releases take either this or
# `guardrail: akto_hook.AktoGuardrail`. The file must not be called akto_hook.py (it would hide the package).
from akto_hook import AktoGuardrail as AktoGuardrail
