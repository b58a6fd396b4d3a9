"""Stage 2, the model: the label layout and age decoding, metrics, training, a run's files, devices and
parameter-server jobs, the engines (onnxruntime, MXNet) and evaluation."""
