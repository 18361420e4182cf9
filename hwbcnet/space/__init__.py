"""Search spaces: models and the width variables derived from them by tracing."""

from hwbcnet.space.layers import Layer
from hwbcnet.space.models import MODELS, get_model_entry
from hwbcnet.space.space import WidthSpace, build_space

__all__ = ["Layer", "MODELS", "WidthSpace", "build_space", "get_model_entry"]
