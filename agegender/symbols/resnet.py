"""InsightFace-style face ResNet (`r*` networks): 3x3 stride-1 stem, pre-activation-style residual
units (BN, conv, BN, PReLU, conv, BN), PReLU, optional squeeze-and-excitation."""
from __future__ import annotations

from mxnet.gluon import HybridBlock, nn

from agegender.symbols.common import GAPHead, Normalize, batch_norm, conv_bn

UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
FILTERS = (64, 128, 256, 512)


class SE(HybridBlock):
    """Squeeze-and-excitation: channel weights from a global pool through a bottleneck."""

    def __init__(self, channels: int, reduction: int = 16, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.fc1 = nn.Conv2D(channels // reduction, 1)
            self.act = nn.PReLU()
            self.fc2 = nn.Conv2D(channels, 1)

    def hybrid_forward(self, F, x):
        w = F.sigmoid(self.fc2(self.act(self.fc1(F.contrib.AdaptiveAvgPooling2D(x, output_size=1)))))
        return F.broadcast_mul(x, w)


class ResidualUnit(HybridBlock):
    """BN, conv3x3, BN, PReLU, conv3x3 (stride), BN [, SE] plus a projected or identity shortcut."""

    def __init__(self, channels: int, stride: int, project: bool, use_se: bool = False, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential(prefix="")
            self.body.add(batch_norm(),
                          conv_bn(channels, 3, 1, act="prelu"),
                          conv_bn(channels, 3, stride, act=None))
            self.se = SE(channels) if use_se else None
            self.shortcut = conv_bn(channels, 1, stride, act=None) if project else None

    def hybrid_forward(self, F, x):
        y = self.body(x)
        if self.se is not None:
            y = self.se(y)
        return y + (self.shortcut(x) if self.shortcut is not None else x)


class FaceResNet(HybridBlock):
    """Face ResNet-`depth` (18, 34, 50, 100) with a GAP head, (N,3,112,112) in, (N,202) out."""

    def __init__(self, depth: int = 50, use_se: bool = False, learn_output_scale: bool = False, **kwargs):
        super().__init__(**kwargs)
        if depth not in UNITS:
            raise ValueError(f"ResNet depth must be one of {sorted(UNITS)}, got {depth}")
        with self.name_scope():
            self.normalize = Normalize()
            self.features = nn.HybridSequential(prefix="")
            self.features.add(conv_bn(64, 3, 1, act="prelu"))
            for units, c in zip(UNITS[depth], FILTERS):
                for i in range(units):
                    self.features.add(ResidualUnit(c, 2 if i == 0 else 1, project=(i == 0), use_se=use_se))
            self.output = GAPHead(in_channels=FILTERS[-1], learn_scale=learn_output_scale)

    def hybrid_forward(self, F, x):
        return self.output(self.features(self.normalize(x)))
