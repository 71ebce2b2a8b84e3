"""Generation backends behind one small protocol, used by eval and serve."""

from kollm.engines.base import Engine, GenerationParams

__all__ = ["Engine", "GenerationParams"]
