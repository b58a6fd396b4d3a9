"""Stage 1, data: reading images, detecting and aligning faces, parsing the sources, splitting, the
record contract, packing, the label histogram, and the training/eval record iterators."""
