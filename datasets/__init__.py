"""Datasets: the synthetic inspection-photo generator, label formats, manifests, augmentation.

Knows nothing of models. COCO (as a plain dict) is the one internal label format.
"""
