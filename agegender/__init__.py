"""Importable logic shared by the top-level scripts: packing, training, evaluation and inference."""
