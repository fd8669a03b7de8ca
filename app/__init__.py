"""relaybot: human-in-the-loop agents, the 12-factor way."""

import os

# Before anything can import litellm: it must never fetch its price map from the network,
# and its INFO lines repeat on every call.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOG", "WARNING")
