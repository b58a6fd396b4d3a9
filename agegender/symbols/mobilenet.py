"""MobileNet v1 backbone (`m*` networks; the ancestor's default `m50`), width set by `multiplier`."""
from __future__ import annotations

import functools

from mxnet.gluon import HybridBlock, nn

from agegender.symbols.common import GAPHead, Normalize, conv_bn

# (output channels, stride) of the 13 depthwise-separable blocks of MobileNet v1
_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
           (512, 1), (512, 1), (1024, 2), (1024, 1)]


class MobileNet(HybridBlock):
    """MobileNet v1 with a GAP head, (N,3,112,112) RGB 0-255 in, (N,202) out.

    Args:
        multiplier: channel width factor (1.0; 0.25 and 0.5 are the CPU-sized ones).
        version_input: 1 = stride-1 first conv (InsightFace's 112x112 face nets, 7x7 final map);
            0 = stride 2, about 4x cheaper.
        learn_output_scale: the output BatchNorm learns its gamma (`GAPHead`).
    """

    def __init__(self, multiplier: float = 1.0, version_input: int = 1, learn_output_scale: bool = False, **kwargs):
        super().__init__(**kwargs)
        width = lambda c: max(8, int(c * multiplier))  # noqa: E731
        # BatchNorm as InsightFace's fmobilenet (MXNet defaults: fix_gamma, eps 1e-3), so its released
        # MobileNet-0.25 checkpoint is this network at multiplier 0.25, version_input 1, exactly
        conv = functools.partial(conv_bn, bn_scale=False, bn_epsilon=1e-3)
        with self.name_scope():
            self.normalize = Normalize()
            self.features = nn.HybridSequential(prefix="")
            self.features.add(conv(width(32), 3, 1 if version_input == 1 else 2))
            c_in = width(32)
            for c, s in _BLOCKS:
                self.features.add(conv(c_in, 3, s, groups=c_in), conv(width(c), 1, 1))
                c_in = width(c)
            self.output = GAPHead(in_channels=c_in, learn_scale=learn_output_scale)

    def hybrid_forward(self, F, x):
        return self.output(self.features(self.normalize(x)))
