"""Backbones (iresnet, mobilefacenet), margin heads, Partial FC and weight loading.

Importing this package registers every backbone in `registry.BACKBONES`.
"""

from facekd.models import iresnet, mobilefacenet  # noqa: F401  (registers the backbones)
from facekd.models.backbone import Backbone, BackboneSpec, backbone_spec, build_backbone
from facekd.models.heads import CombinedMargin, MarginClassifier
from facekd.models.loading import checkpoint_fields, load_backbone, save_backbone
from facekd.models.partial_fc import PartialFC

__all__ = [
    "Backbone",
    "BackboneSpec",
    "CombinedMargin",
    "MarginClassifier",
    "PartialFC",
    "backbone_spec",
    "build_backbone",
    "checkpoint_fields",
    "load_backbone",
    "save_backbone",
]
