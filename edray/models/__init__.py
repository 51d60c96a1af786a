"""Segmentable backbones, the growing ED student and its teaching-reference heads."""

from edray.models import cifar_resnet, cnn, torchvision_nets, wrn  # noqa: F401  (fill ARCHITECTURES)
from edray.models.backbone import ARCHITECTURES, Backbone, build_backbone
from edray.models.flops import count_macs
from edray.models.student import GrowingStudent, TRHead

__all__ = ["ARCHITECTURES", "Backbone", "build_backbone", "GrowingStudent", "TRHead", "count_macs"]
