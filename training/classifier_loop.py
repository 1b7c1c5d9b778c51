"""The tile classifier's loop: one epoch of training on cached crops, and crop-level validation.

Multi-label: one sigmoid logit per family, binary cross-entropy over the labels a crop can answer
(a family marked ignore on a crop, cut by its border or too small at its scale, adds no loss);
batches are balanced between crops with and without defects (:func:`training.data.balanced_batches`).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.data import BatchFeeder, TileCache, load_batch
from training.engine import model_input, optimiser_step


def classifier_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    kept: torch.Tensor | None = None,
    distill: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean binary cross-entropy over the labels a crop can answer (label -1: ignore). With ``kept``
    (the starting model's probabilities on the same crops) and ``distill`` (a weight per family), plus
    each family's cross-entropy against ``kept``, weighted and summed over families, averaged over crops."""
    known = (labels >= 0).float()
    per_label = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0), reduction="none")
    loss = (per_label * known).sum() / known.sum().clamp(min=1.0)
    if kept is not None and distill is not None:
        away = F.binary_cross_entropy_with_logits(logits, kept, reduction="none")
        loss = loss + (away * distill).sum(dim=1).mean()
    return loss


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    feed: BatchFeeder,
    batches: list[np.ndarray],
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    log=None,
    log_every: int = 20,
    teacher: torch.nn.Module | None = None,
    distill: torch.Tensor | None = None,
) -> dict[str, float]:
    """Train on ``batches`` (index arrays into the cache, augmented by ``feed``); returns mean loss
    and throughput.

    With ``teacher`` (the starting model, frozen) and ``distill`` (a weight per family), each crop's
    family scores are also pulled towards the teacher's on that crop (learning without forgetting).
    """
    model.train()
    total, seen, start = 0.0, 0, time.perf_counter()
    for step, (indices, (images, labels, *_)) in enumerate(zip(batches, feed(batches), strict=True)):
        x = model_input(images, device)
        y = torch.from_numpy(labels).to(device, non_blocking=True)
        kept = None
        with torch.autocast(device.type, enabled=scaler is not None):
            logits = model(x)
            if teacher is not None:  # in the same precision as the student it is compared with
                with torch.no_grad():
                    kept = torch.sigmoid(teacher(x).float())
        loss = classifier_loss(logits.float(), y, kept, distill)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(
                f"classifier loss is {loss.item()} at step {step}: lower the learning rate"
            )
        optimiser_step(loss, optimizer, scheduler, scaler)
        total += loss.item() * len(indices)
        seen += len(indices)
        if log and log_every and (step + 1) % log_every == 0:
            lr = scheduler.get_last_lr()[0]
            log(f"  step {step + 1}/{len(batches)}  loss {total / seen:.4f}  lr {lr:.2e}")
    elapsed = time.perf_counter() - start
    return {"loss": total / max(seen, 1), "crops_per_s": seen / max(elapsed, 1e-9), "seconds": elapsed}


@torch.inference_mode()
def crop_scores(
    model: torch.nn.Module, cache: TileCache, prep: Any, device: torch.device, batch_size: int = 32
) -> np.ndarray:
    """Sigmoid scores N×F for every crop in the cache (no augmentation)."""
    model.eval()
    out = []
    for start in range(0, len(cache), batch_size):
        idx = np.arange(start, min(start + batch_size, len(cache)))
        images, *_ = load_batch(cache, idx, None, prep, 0.5)
        out.append(torch.sigmoid(model(model_input(images, device)).float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, cache.labels.shape[1]), np.float32)


def evaluate_crops(
    model: torch.nn.Module, cache: TileCache, prep: Any, device: torch.device, families: list[str]
) -> dict[str, float]:
    """Crop-level validation: BCE loss and per-family AP/AUROC; ``score`` (mean AP) drives early stopping."""
    from training.data import IGNORE
    from training.evaluate import family_metrics, flat_metrics

    scores = crop_scores(model, cache, prep, device)
    known = cache.labels != IGNORE
    labels = cache.labels == 1
    eps = 1e-6
    nll = -(labels * np.log(scores + eps) + (~labels) * np.log(1 - scores + eps))
    loss = float(nll[known].mean()) if known.any() else 0.0
    per_family = {}
    for i, family in enumerate(families):  # each family on the crops that can answer for it
        rows = known[:, i]
        per_family.update(family_metrics(scores[rows][:, [i]], labels[rows][:, [i]], 0.5, [family]))
    flat = flat_metrics(per_family, prefix="val_crops")
    flat["val_crops/loss"] = loss
    flat["score"] = flat.get("val_crops/mean_average_precision", -loss)
    return flat
