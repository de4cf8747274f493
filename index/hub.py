"""Is the Hugging Face hub reachable? Answered once per process, before any model loads.

Without an answer, a machine that cannot reach the hub (an air-gapped cluster node, a sandbox) waits for
huggingface_hub's retries on every `from_pretrained` (2.5 minutes measured for one Qwen2.5-VL id) before
it reads the local cache or reports the model missing. So the stages ask `offline()` first: it is true when
`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE` is set, or when a TCP connection to the hub endpoint fails
within `PROBE_TIMEOUT_S`; in that case offline mode is switched on for the whole process, and every
library reads the local cache at once. Local folders never touch the network either way.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}
_answer: bool | None = None


def _env_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def reachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the endpoint's host opens within `timeout` seconds."""
    url = urlparse(endpoint)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def offline() -> bool:
    """True when hub downloads are off or impossible; then the process is put in offline mode (see above)."""
    global _answer
    from huggingface_hub import constants

    if _env_offline() or constants.HF_HUB_OFFLINE:
        return True
    if _answer is None:
        _answer = not reachable(constants.ENDPOINT)
        if _answer:
            os.environ["HF_HUB_OFFLINE"] = "1"  # for child processes (workers, actors)
            constants.HF_HUB_OFFLINE = True  # huggingface_hub reads this at every request
    return _answer


def local_only(model_id: str) -> bool:
    """Whether a model load must read the local cache only: a hub id (not a folder) while `offline()`."""
    return not Path(str(model_id)).exists() and offline()


def missing_model_message(model_id: str) -> str:
    """The one line every command prints for a hub model it cannot load offline."""
    where = "cannot be downloaded here (offline)" if offline() else "could not be downloaded"
    return (f"model {model_id} is not in the local Hugging Face cache and {where}; fetch it first with "
            f"`hf download {model_id}` (or `huggingface-cli download {model_id}`), or pass a local folder")


def is_cached(model_id: str, filename: str = "config.json") -> bool:
    """Whether a hub id has `filename` in the local cache (a local folder: whether it exists)."""
    if Path(str(model_id)).exists():
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_id, filename), str)
