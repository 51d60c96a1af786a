"""edray: find the best Education Distillation recipe for an image dataset, at cluster scale."""

from edray.errors import EdrayError
from edray.spec import Spec, load_spec

__all__ = ["EdrayError", "Spec", "load_spec", "__version__"]

__version__ = "0.1.0"
