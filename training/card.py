"""The model card written into every bundle: what the model saw, how it scores, where it is weak."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def model_card(
    bundle: Any, report: dict, split: Any, history: list[dict], from_bundle: Any, command: str
) -> str:
    """Markdown: data version, recipe, validation metrics, thresholds, known limits, how to reproduce."""
    cfg = bundle.config
    lines = [
        f"# {bundle.name} {bundle.version}",
        "",
        f"Task: **{bundle.task}** (`{bundle.arch}`, {bundle.arch_kwargs.get('backbone', '')}) on "
        f"{cfg['prep']['tile_size']} px tiles of photos at {cfg['prep']['work_long_side']} px long side, "
        f"network input {cfg['prep']['input_size']} px. Families: {', '.join(bundle.families)}.",
        "",
        "## Data",
        f"- dataset version `{split.data_version}` (split `{split.split_id}`): "
        f"{len(split.train_ids)} training photos; {report['photos']} validation photos fit the "
        "calibration and are reported below (cross-fitted)",
        f"- counts: `{split.counts}`",
    ]
    if from_bundle is not None:
        lines.append(f"- fine-tuned from `{from_bundle.ref}` (data `{from_bundle.data_version}`)")
        if cfg.get("wise_ft"):
            lines.append(
                f"- weights {cfg['wise_ft']:g} of the way from `{from_bundle.ref}` to the best epoch's "
                "(WiSE-FT weight average)"
            )
        start_members = from_bundle.arch_kwargs.get("members", 1)
        if cfg.get("ensemble_with_start") and bundle.arch_kwargs.get("members", 1) > start_members:
            lines.append(
                f"- its members 1-{start_members} are `{from_bundle.ref}` as it was, the others fine-tuned: "
                "each tile's score is the mean of their logits (`ensemble_with_start`)"
            )
        if cfg.get("distill") and not cfg.get("teachers"):
            lines.append(
                f"- scores on the training crops held near `{from_bundle.ref}`'s with weights "
                f"`{cfg['distill']}` (learning without forgetting)"
            )
    if cfg.get("distill") and cfg.get("teachers"):
        lines.append(
            f"- scores on the training crops held near the mean logits of `{'`, `'.join(cfg['teachers'])}` "
            f"with weights `{cfg['distill']}` (an ensemble distilled)"
        )
    lines += [
        "",
        "## Recipe",
        f"- epochs {cfg['epochs']} (ran {len(history)}), batch {cfg['batch_size']}, lr {cfg['lr']}, "
        f"{cfg['schedule']} schedule, weight decay {cfg['weight_decay']}, seed {cfg['seed']}",
        f"- model kwargs `{bundle.arch_kwargs}`",
        f"- crops: `{cfg['cache']}`; augmentation `{cfg['augment']}`; "
        f"positives per batch {cfg['positive_fraction']}",
    ]
    if bundle.memory:
        levels = ", ".join(f"{lv}: {v['patches']}" for lv, v in bundle.memory["levels"].items())
        lines.append(
            f"- memory of the training photos' good tiles (`memory.npz`; patches per level {levels}); "
            f"surprise added to the logits with weights `{bundle.memory['weights']}`"
        )
    lines += [
        "",
        "## Validation (whole photos, cross-fitted calibrated scores, at the flag threshold)",
        "",
        *validation_table(bundle, report),
    ]
    score_of = "the best box's score" if bundle.task == "detector" else "the max tile score"
    # Boxes under the decoding threshold leave a photo at 0, so a recall goal can put flag at "any box".
    detector_note = (
        " Triage's verdicts come from the classifier's thresholds: these are for `loupe val`, and a "
        "detector's photo recall is capped by the photos on which it leaves no box."
        if bundle.task == "detector"
        else ""
    )
    target = cfg["calibration"]["target_recall"]
    review = cfg["calibration"]["review_recall"]
    lines += [
        "",
        "## Thresholds",
        f"Per family, Platt scaling on {score_of}, fitted on all validation photos; **flag** is "
        f"the highest threshold keeping recall ≥ {target} on them, **review** keeps ≥ {review}. The table "
        "above is cross-fitted: each half of the photos (alternate by id) is scored with the calibration "
        "and thresholds fitted on the other half, so no recall is measured on the photos that chose its "
        "threshold. Its AUROC and AP pool both halves; the flag and review columns are the shipped values."
        + detector_note,
        *_level_lines(bundle, cfg),
        "",
        "## Known limits",
        "- Validation photos come from the same generator and seed range as training; a new PO (other "
        "products, light, phones) is the real test: `loupe val --model REF --data PO`.",
        "- A family with no defect photos in validation gets fallback thresholds (flag 0.5, review 0.25).",
        "- Trained on the data above (synthetic unless the dataset says otherwise): real factory photos, "
        "new products or lighting need a fine-tune (`loupe train ... --from`).",
        "- Defects much smaller than a few working-scale pixels (fine threads on wide shots) are missed.",
        "",
        "## Reproduce",
        *command_block(command),
    ]
    return "\n".join(lines)


def command_block(command: str) -> list[str]:
    """Markdown lines: the command that reproduces a model, fenced, and a blank line."""
    return ["```", command, "```", ""]


def _level_lines(bundle: Any, cfg: dict) -> list[str]:
    """What the card says about per-level calibration: which families have it, and which asked for it
    and did not get it (too few validation photos with or without the defect)."""
    asked = cfg.get("calibration", {}).get("per_level") or []
    if not asked:
        return []
    fitted = sorted(bundle.calibration.get("levels") or {})
    missing = [f for f in asked if f not in fitted]
    lines = [""]
    if fitted:
        lines.append(
            f"Per pyramid level first ({', '.join(fitted)}): each level's max tile score has its own Platt "
            "fit, and the photo score is the max over the calibrated levels, so one level's inflated "
            "scores cannot outbid the others."
        )
    if missing:
        least = cfg["calibration"]["per_level_min_photos"]
        lines.append(
            f"Asked for but not fitted ({', '.join(missing)}): fewer than {least} validation photos with "
            "or without the defect, no level ranked them the right way round, or per level predicted "
            "held-out validation photos no better (leave one out); those keep the plain max over tiles."
        )
    return lines


def validation_table(bundle: Any, report: dict) -> list[str]:
    """Markdown lines: per family the photo counts, AUROC (with its 95 % bootstrap interval over the
    photos), AP, shipped thresholds, recall and false flags (the report's cross-fitted figures), the
    photo-level shares, and a detector's mAP."""
    lines = [
        "| family | defect photos | good photos | AUROC (95 %) | AP | flag | review | recall "
        "| false-flag rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    intervals = report.get("auroc_interval") or {}
    for family, m in report["per_family"].items():
        t = bundle.thresholds.get(family, {})
        auroc = _fmt(m["auroc"])
        if family in intervals:
            auroc += " ({}-{})".format(*map(_fmt, intervals[family]))
        lines.append(
            f"| {family} | {m['n_positive']} | {m['n_negative']} | {auroc} | "
            f"{_fmt(m['average_precision'])} | {_fmt(t.get('flag'))} | {_fmt(t.get('review'))} | "
            f"{_fmt(m['recall'])} | {_fmt(m['false_flag_rate'])} |"
        )
    t = report.get("triage")
    if t and t["defective_photos"] and t["good_photos"]:
        lines += [
            "",
            f"A photo is flagged when any family reaches its flag threshold: {_fmt(t['defective_flagged'])} "
            f"of the {t['defective_photos']} photos with a defect and {_fmt(t['good_flagged'])} of the "
            f"{t['good_photos']} good ones.",
        ]
    if "map" in report:
        mp = report["map"]
        lines += [
            "",
            f"Detector mAP@0.5 {_fmt(mp['map50'])}, mAP@[.5:.95] {_fmt(mp['map50_95'])} (pycocotools).",
        ]
    return lines


def recalibration_card(bundle: Any, report: dict, fitted_on: str, recipe: str | None, command: str) -> str:
    """``bundle``'s card with a section for its recalibration (``loupe calibrate``): on which photos,
    with which recipe's scoring settings, the new cross-fitted table and the command."""
    settings = f", with the scoring settings of `{recipe}`" if recipe else ""
    # An ensemble's first card has no validation table of its own to replace.
    table = "replaces the validation table above" if "| family |" in bundle.card else "gives its figures"
    lines = [
        bundle.card.rstrip(),
        "",
        f"## Recalibrated as version {bundle.version}",
        "",
        f"Calibration and thresholds fitted again on {fitted_on}, the weights unchanged{settings}. This "
        f"table (cross-fitted) {table}:",
        "",
        *validation_table(bundle, report),
        "",
        *command_block(command),
    ]
    return "\n".join(lines)


def bag_card(
    bundle: Any, report: dict, split_dirs: list[Path], kept: list[str], start: Any, command: str
) -> str:
    """The bag's model card: what it averages, how it was calibrated, its out-of-bag figures."""
    kept_note = (
        f" ({', '.join(kept)}: no epoch beat the start, so only its calibration photos count)" if kept else ""
    )
    lines = [
        f"# {bundle.name} {bundle.version}: a bag of {len(split_dirs)} fine-tunes of `{start.ref}`",
        "",
        f"The recipe trained {len(split_dirs)} times, each at its own seed's train/validation split of the "
        f"photos{kept_note}; shipped as one tile_ensemble of {bundle.arch_kwargs['members']} networks whose "
        "logits are averaged"
        + (", the starting model's among them" if bundle.config.get("ensemble_with_start") else "")
        + (", with the splits' memories of good tiles averaged" if bundle.memory else "")
        + " (`training.bag`).",
        "",
        f"Calibrated out of bag: on each split's validation photos ({report['photos']} in all) as that "
        "split's own model scored them, never by networks that learnt from them. Figures cross-fitted:",
        "",
        *validation_table(bundle, report),
        "",
        "Reproduce:",
        "",
        *command_block(command),
    ]
    return "\n".join(lines)
