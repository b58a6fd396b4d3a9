"""Stage 3, serving: photo to labelled faces (FaceAnalyzer), infer.py's outputs, video and tracking, the
HTTP service and its batcher."""
