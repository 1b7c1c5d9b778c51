"""The ``loupe`` command: a thin layer that parses arguments and calls cv, datasets, models,
training and serving."""
