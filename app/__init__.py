"""relaybot: human-in-the-loop agents, the 12-factor way."""

import os

# Before anything can import litellm: it must never fetch its price map from the network,
# and its INFO lines repeat on every call.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOG", "WARNING")
# OpenAI-compatible providers through litellm's own HTTP handler rather than the openai SDK:
# the same request and the same typed errors for a third less CPU per call (the SDK walks
# every message and tool schema through its type transforms). "false" goes back to the SDK.
os.environ.setdefault("EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER", "true")
