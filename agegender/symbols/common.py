"""Pieces every network shares: input normalisation, the GAP output head, the output contract."""
from __future__ import annotations

from mxnet.gluon import HybridBlock, nn

NUM_OUTPUTS = 202  # [0:2] gender logits (1 = male), then 100 pairs "age > k" (index 1 = yes)
OUTPUT_NAME = "fc1"  # exported symbol output: fc1_output, as InsightFace's gender-age checkpoint


def batch_norm(scale: bool = True, epsilon: float = 2e-5) -> nn.BatchNorm:
    """BatchNorm with InsightFace's settings (eps 2e-5, momentum 0.9); `scale=False` is MXNet's
    fix_gamma=True (gamma held at 1)."""
    return nn.BatchNorm(epsilon=epsilon, momentum=0.9, scale=scale)


class Normalize(HybridBlock):
    """RGB 0-255 in, (x - 127.5) / 128 out: normalisation lives inside the graph."""

    def hybrid_forward(self, F, x):
        return (x - 127.5) * 0.0078125


class GAPHead(HybridBlock):
    """`--version-output GAP`: BN, PReLU (one slope per channel, as InsightFace's), global average
    pool, flatten, FC(202), BN.

    InsightFace's last BN holds gamma at 1 (fix_gamma), so every logit has unit spread over a batch:
    a gender logit difference stays within about +-4 (no P(male) beyond 0.98) and the loss of easy faces
    never fades. `learn_scale` lets that BN learn its gamma (from 1: the same outputs at the start)."""

    def __init__(self, in_channels: int, num_outputs: int = NUM_OUTPUTS, learn_scale: bool = False, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.bn1 = batch_norm()
            self.act = nn.PReLU(in_channels=in_channels)
            self.pool = nn.GlobalAvgPool2D()
            self.fc = nn.Dense(num_outputs, flatten=True)
            self.bn2 = batch_norm(scale=learn_scale)  # InsightFace's `fc1` BatchNorm: fix_gamma=True, unless learn_scale

    def hybrid_forward(self, F, x):
        return self.bn2(self.fc(self.pool(self.act(self.bn1(x)))))


def conv_bn(channels: int, kernel: int, stride: int, groups: int = 1, act: str | None = "relu",
            bn_scale: bool = True, bn_epsilon: float = 2e-5) -> nn.HybridSequential:
    """Conv (no bias), BN, and an optional ReLU/PReLU."""
    seq = nn.HybridSequential(prefix="")
    seq.add(nn.Conv2D(channels, kernel, stride, kernel // 2, groups=groups, use_bias=False),
            batch_norm(scale=bn_scale, epsilon=bn_epsilon))
    if act == "relu":
        seq.add(nn.Activation("relu"))
    elif act == "prelu":
        seq.add(nn.PReLU())
    return seq
