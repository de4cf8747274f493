"""Video captioning: VLM backends (transformers, vLLM), frame sampling, prompts, batching and caption checks.

    caption-videos clips.parquet -o out/ --model qwen-vl          # or a folder of raw videos

    from captioner import Captioner, FramePolicy, load_prompt, make_backend, resolve_model
    backend = make_backend("transformers", resolve_model("qwen-vl")).load()
    df, failures, summary = Captioner(backend, load_prompt("detailed"), FramePolicy(8)).run(manifest, "out/")
"""

from .backends import BACKENDS, make_backend
from .checks import check_caption
from .frames import FramePolicy
from .models import ALIASES, ModelError, resolve_model
from .pipeline import Captioner
from .prompts import load_prompt

__all__ = ["ALIASES", "BACKENDS", "Captioner", "FramePolicy", "ModelError", "check_caption", "load_prompt",
           "make_backend", "resolve_model"]
