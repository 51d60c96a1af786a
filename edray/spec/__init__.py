"""The YAML spec of an edray run: its schema, ``--set`` path editing and file loading.

- :mod:`edray.spec.schema`: the typed models (:class:`Spec` and its sections);
- :mod:`edray.spec.paths`: dotted paths (``ed.temperatures[1]``) into a raw spec mapping;
- :mod:`edray.spec.loading`: spec files (e.g. ``search_spaces/digits.yaml``, each a whole
  spec) -> :class:`Spec`, every mistake as one line naming the field.
"""

from edray.spec.loading import load_spec, spec_from_dict
from edray.spec.paths import apply_overrides, get_path, set_path
from edray.spec.schema import *  # noqa: F403 (every model: AugmentSpec, DatasetSpec, ..., Spec)
from edray.spec.schema import __all__ as _MODELS

__all__ = [*_MODELS, "apply_overrides", "get_path", "load_spec", "set_path", "spec_from_dict"]
