"""cv: decoding, the photo-quality gate, model-input preparation, tiling and drawing.

Pure functions on bytes and arrays; used by training and serving alike. Knows nothing of HTTP,
training loops or model files.
"""
