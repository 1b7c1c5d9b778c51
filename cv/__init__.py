"""cv: decoding, the photo-quality gate, model-input preparation, tiling and drawing.

Pure functions on bytes and arrays; used by training and serving alike. Knows nothing of HTTP,
training loops or model files.

- ``cv.decode``: ``decode_photo`` (bytes/path -> upright RGB ``Photo``, DCT-reduced when asked),
  ``read_header``, ``orient_boxes``.
- ``cv.errors``: ``PhotoError`` and its subclasses for unreadable uploads.
- ``cv.quality``: ``QualityConfig`` (configs/quality.yaml), ``assess_photo``, ``assess_file``,
  ``DuplicateIndex``, ``check_duplicate``.
- ``cv.prep``: ``PrepSettings`` (saved with every model), ``to_working_scale``, ``normalise``,
  ``letterbox``, ``prepare_tiles``, ``min_decode_side``.
- ``cv.tiling``: ``Tile``, ``tile_grid``, ``merge_tile_detections``.
- ``cv.draw``: ``draw_findings``, ``thumbnail``, ``encode_jpeg``.
- ``cv.stream``: ``map_photos`` (ordered, bounded, per-photo errors), ``list_photos``.
"""
