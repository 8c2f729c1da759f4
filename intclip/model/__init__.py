"""The IntCLIP network: sight-semantic encoder, sight-assisted aggregation, class text and learned
prompts, the class head. `IntCLIP` and its `ModelConfig` are importable from here.
"""

from intclip.model.intclip import IntCLIP, ModelConfig

__all__ = ["IntCLIP", "ModelConfig"]
