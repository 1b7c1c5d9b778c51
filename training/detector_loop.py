"""The tile detector's loop: one epoch of CenterNet training on cached crops, and crop-level validation.

Targets are encoded per batch with :func:`models.detector.encode_targets` from the (augmented) crop
boxes; the loss is :func:`models.detector.detector_loss`. Validation scores crops as COCO images with
pycocotools, so early stopping watches mAP@0.5 rather than a loss that mixes heads.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from datasets.taxonomy import CATEGORY_IDS
from models.detector import decode_detections, detector_loss, encode_targets
from training.data import BatchFeeder, CropBatch, TileCache, load_batch
from training.engine import model_input, optimiser_step


def _targets(model: torch.nn.Module, batch: CropBatch) -> dict[str, torch.Tensor]:
    return encode_targets(
        batch.boxes,
        batch.families,
        batch.subtypes if getattr(model, "num_subtypes", 0) else None,
        input_size=batch.images.shape[-1],
        stride=model.stride,
        num_classes=model.num_classes,
        ignore_boxes=batch.ignore_boxes,
        ignore_labels=batch.ignore_families,
    )


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    feed: BatchFeeder,
    batches: list[np.ndarray],
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    loss_weights: dict[str, float] | None = None,
    log=None,
    log_every: int = 20,
) -> dict[str, float]:
    """Train on ``batches`` (augmented by ``feed``); returns mean total loss, mean loss parts and
    throughput."""
    model.train()
    total, seen, parts_sum, start = 0.0, 0, {}, time.perf_counter()
    for step, (indices, batch) in enumerate(zip(batches, feed(batches), strict=True)):
        targets = _targets(model, batch)
        x = model_input(batch.images, device)
        with torch.autocast(device.type, enabled=scaler is not None):
            outputs = model(x)
        loss, parts = detector_loss({k: v.float() for k, v in outputs.items()}, targets, loss_weights)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(
                f"detector loss is {loss.item()} at step {step}: lower the learning rate"
            )
        optimiser_step(loss, optimizer, scheduler, scaler)
        total += loss.item() * len(indices)
        seen += len(indices)
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v * len(indices)
        if log and log_every and (step + 1) % log_every == 0:
            lr = scheduler.get_last_lr()[0]
            log(f"  step {step + 1}/{len(batches)}  loss {total / seen:.4f}  lr {lr:.2e}")
    elapsed = time.perf_counter() - start
    out = {"loss": total / max(seen, 1), "crops_per_s": seen / max(elapsed, 1e-9), "seconds": elapsed}
    out.update({f"loss_{k}": v / max(seen, 1) for k, v in parts_sum.items()})
    return out


@torch.inference_mode()
def evaluate_crops(
    model: torch.nn.Module,
    cache: TileCache,
    prep: Any,
    device: torch.device,
    families: list[str],
    score_threshold: float = 0.01,  # low: COCO AP integrates over all scores
    top_k: int = 50,
    batch_size: int = 32,
) -> dict[str, float]:
    """Crop-level validation: loss and COCO mAP with each crop as an image; ``score`` = mAP@0.5."""
    from training.evaluate import detection_map

    model.eval()
    images_info, gt_anns, dets = [], [], []
    total, seen = 0.0, 0
    size = prep.input_size
    for start in range(0, len(cache), batch_size):
        idx = np.arange(start, min(start + batch_size, len(cache)))
        batch = load_batch(cache, idx, None, prep, 0.5)
        outputs = model(model_input(batch.images, device))
        loss, _ = detector_loss({k: v.float() for k, v in outputs.items()}, _targets(model, batch))
        total += loss.item() * len(idx)
        seen += len(idx)
        decoded = decode_detections(outputs, score_threshold, top_k, input_size=size, stride=model.stride)
        for i, d, b, f, ib, if_ in zip(
            idx, decoded, batch.boxes, batch.families, batch.ignore_boxes, batch.ignore_families, strict=True
        ):
            image_id = int(i) + 1
            images_info.append({"id": image_id, "width": size, "height": size})
            for box, fam in zip(b, f, strict=True):
                gt_anns.append(_ann(len(gt_anns) + 1, image_id, CATEGORY_IDS[families[int(fam)]], box))
            # A cut or too-small defect: COCO's crowd region, so a box on it is neither a hit nor a miss.
            for box, fam in zip(ib, if_, strict=True):
                ann = _ann(len(gt_anns) + 1, image_id, CATEGORY_IDS[families[int(fam)]], box)
                gt_anns.append({**ann, "iscrowd": 1})
            for box, score, label in zip(d.boxes, d.scores, d.labels, strict=True):
                det = _ann(0, image_id, CATEGORY_IDS[families[int(label)]], box)
                det["score"] = float(score)
                dets.append(det)
    gt = {"images": images_info, "annotations": gt_anns, "categories": _categories(families)}
    m = detection_map(gt, dets)
    flat = m.flat(prefix="val_crops")
    flat["val_crops/loss"] = total / max(seen, 1)
    # mAP stays at 0 for the first epochs of a CenterNet; until it moves, the falling loss (negative,
    # so any mAP > 0 ranks above it) keeps early stopping from ending the run.
    flat["score"] = m.map50 if m.map50 > 0 else -flat["val_crops/loss"]
    return flat


def _ann(ann_id: int, image_id: int, category_id: int, box_xyxy) -> dict:
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": (x1 - x0) * (y1 - y0),
        "iscrowd": 0,
    }


def _categories(families: list[str]) -> list[dict]:
    return [{"id": CATEGORY_IDS[f], "name": f} for f in families]
