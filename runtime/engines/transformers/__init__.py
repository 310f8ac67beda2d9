"""An in-process transformers model behind the `Engine` interface, speaking vLLM's wire format.

Causal LMs serve chat and completions; sequence classifiers serve vLLM's
classify API. One idea per module:

- `loading`: a folder onto a device (`load_causal_lm`, `load_classifier`),
  usable on its own, e.g. to train the same models;
- `requests`: the wire types narrowed to what this engine serves;
- `prompts`: prompts as token ids, and the room they leave;
- `sampling`: sampling parameters and the sampler (vLLM's order);
- `decoding`: token ids to text, stop strings, finish reasons (pure);
- `generation`: the decode loop over the model's KV cache;
- `classification`: label probabilities for the classify API;
- `engine`: `TransformersEngine`, the concurrency around one model.

The response layout is `kascade.runtime.engines.vllm_layout`, shared with the
fixed-answer test server. torch and transformers are imported lazily:
importing this package is cheap.
"""

from kascade.runtime.engines.transformers.decoding import IncrementalDetokenizer, StopStringMatcher
from kascade.runtime.engines.transformers.engine import TransformersEngine
from kascade.runtime.engines.transformers.loading import (
    LoadedModel,
    ModelLoadError,
    Task,
    load_causal_lm,
    load_classifier,
    load_model,
)
from kascade.runtime.engines.transformers.prompts import fallback_chat_prompt
from kascade.runtime.engines.transformers.sampling import SamplingParams, sample_next_token

__all__ = [
    "IncrementalDetokenizer",
    "LoadedModel",
    "ModelLoadError",
    "SamplingParams",
    "StopStringMatcher",
    "Task",
    "TransformersEngine",
    "fallback_chat_prompt",
    "load_causal_lm",
    "load_classifier",
    "load_model",
    "sample_next_token",
]
