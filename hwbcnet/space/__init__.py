"""Search spaces: models and the width variables derived from them by tracing."""

from hwbcnet.space.layers import Layer, Layout, Segment
from hwbcnet.space.models import MODELS, get_model_entry
from hwbcnet.space.space import WidthSpace, build_space, space_from_description

__all__ = ["Layer", "Layout", "MODELS", "Segment", "WidthSpace", "build_space", "get_model_entry",
           "space_from_description"]
