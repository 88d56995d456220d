"""Hinton KD (Hinton et al. 2015) on face-classification logits.

loss_kd = T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), summed over classes and averaged over
the batch, with T = 4 (TFace and FaceX-Zoo defaults). By default z = s * cos(theta) without the
margin for both networks (the margin belongs to the identity loss), `margin_logits` distils the
margin-applied logits instead. Total: identity_weight * margin CE + weight * loss_kd.
"""

from __future__ import annotations

from torch import nn

from facekd.distill.distiller import DistillSetup
from facekd.distill.logit_kd import LogitDistiller, LogitOptions
from facekd.distill.losses import HintonKDLoss
from facekd.distill.registry import register_distiller


@register_distiller
class HintonKD(LogitDistiller):
    name = "kd"
    Options = LogitOptions

    @classmethod
    def make_loss(cls, options: LogitOptions, setup: DistillSetup) -> nn.Module:
        return HintonKDLoss(options.temperature, sharded=setup.partial_fc)
