"""Several tile classifiers shipped as one bundle, their logits averaged (``loupe ensemble``).

Classifiers trained apart are wrong on different photos: the mean of two lineages' scores ranked the
validation POs and the buyers' photos better than either model (the classifier card), where the mean of
their weights ranked worse than both. An ensemble reads every tile once per member (two members cost
1.5 times one classifier's time a photo: cutting and preparing the tiles is shared). Its weights are
stored in half precision (two members in the size of one in float32), and its calibration and
thresholds are fitted afresh on labelled photos: the members' own fits are for their logits, not the
mean.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from training.validate import recalibrate

# What a member must share with the others to be averaged with them: one architecture, one output.
SHARED_KWARGS = ("backbone", "num_classes")


def ensemble_bundle(
    refs: list[str],
    data: str | Path,
    out: str | Path,
    version: str | None = None,
    split: str | None = None,
    track: bool = True,
    command: str = "",
    log=print,
) -> Path:
    """Write the ensemble of the classifiers ``refs`` to ``out``, calibrated on ``data``; returns it."""
    from models.bundle import load_bundle, save_bundle
    from models.pretrained import read_state_dict
    from models.refs import resolve_model_ref

    if len(refs) < 2:
        raise ValueError(f"an ensemble needs at least 2 classifiers, got {len(refs)}: name them all")
    bundles = [load_bundle(resolve_model_ref(ref, "classifier")) for ref in refs]
    first = bundles[0]
    for ref, bundle in zip(refs, bundles, strict=True):
        if bundle.task != "classifier" or bundle.arch != "tile_classifier":
            raise ValueError(f"{ref}: is a {bundle.arch} {bundle.task}, not a tile classifier to ensemble")
        if bundle.memory:
            raise ValueError(
                f"{ref}: keeps a memory of a buyer's good tiles, which an ensemble has no place for; "
                "ensemble the models without it and fine-tune the ensemble with the memory recipe"
            )
        differs = [k for k in SHARED_KWARGS if bundle.arch_kwargs.get(k) != first.arch_kwargs.get(k)]
        differs += [k for k in ("families", "prep") if getattr(bundle, k) != getattr(first, k)]
        if differs:
            raise ValueError(
                f"{ref}: differs from {refs[0]} in {', '.join(differs)}; an ensemble averages classifiers "
                "that read the same tiles and score the same families"
            )
    state = {
        f"members.{i}.{key}": tensor
        for i, bundle in enumerate(bundles)
        for key, tensor in read_state_dict(bundle.weights_path).items()
    }
    kwargs = {**first.arch_kwargs, "members": len(bundles)}
    members = ", ".join(f"`{b.ref}` ({ref})" for ref, b in zip(refs, bundles, strict=True))
    card = (
        f"# {first.name} ensemble\n\nThe mean logits of {len(bundles)} tile classifiers: {members}. "
        "Each tile is read by every member; the photo score is the max over tiles of the mean.\n"
    )
    bundle = first.model_copy(
        update={
            "arch": "tile_ensemble",
            "arch_kwargs": kwargs,
            "version": version or "+".join(b.version for b in bundles),
            "calibration": {},
            "thresholds": {},
            "metrics": {},  # the first member's figures are not the ensemble's
            "data_version": None,
            "card": card,
        }
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".ensemble-") as tmp:
        save_bundle(bundle, state, tmp, half=True)
        log(f"ensemble of {len(bundles)} classifiers: {members}")
        return recalibrate(
            tmp, data, out, split=split, version=bundle.version, track=track, command=command, log=log
        )
