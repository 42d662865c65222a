"""The open_clip dual encoder: images and texts in, vectors, regions and token states out.

:class:`Encoder` loads and runs a model; :func:`check_weights` and :func:`check_probe`
refuse one whose weights changed since an index recorded its probe vector.
"""

from .encoder import Encoder
from .weights import PROBE_AGREEMENT, check_probe, check_weights, probe_agreement

__all__ = ["PROBE_AGREEMENT", "Encoder", "check_probe", "check_weights", "probe_agreement"]
