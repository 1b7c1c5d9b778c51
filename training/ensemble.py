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
from typing import Any

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
    state = ensemble_state([read_state_dict(bundle.weights_path) for bundle in bundles])
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


def member_states(state: dict, arch: str) -> list[dict]:
    """A classifier's weights as its members' (a ``tile_classifier`` is one member)."""
    if arch == "tile_classifier":
        return [state]
    if arch != "tile_ensemble":
        raise ValueError(f"a {arch} is not a tile classifier or an ensemble of them")
    members: dict[int, dict] = {}
    for key, tensor in state.items():
        _, index, rest = key.split(".", 2)  # members.<i>.<key>
        members.setdefault(int(index), {})[rest] = tensor
    return [members[i] for i in sorted(members)]


def ensemble_state(members: list[dict]) -> dict:
    """The weights of a ``tile_ensemble`` of ``members`` (each a tile classifier's state dict)."""
    return {f"members.{i}.{key}": tensor for i, state in enumerate(members) for key, tensor in state.items()}


def equal_parts(a: dict, b: dict) -> int:
    """How many of a tile classifier's leading parts (the stem, then each stage) hold the same weights
    in the state dicts ``a`` and ``b``."""
    prefixes = [("net.conv_stem.", "net.bn1.")]
    stages = {int(k.split(".")[2]) for k in a if k.startswith("net.blocks.")}
    prefixes += [(f"net.blocks.{s}.",) for s in sorted(stages)]
    for n, part in enumerate(prefixes):
        keys = [k for k in a if k.startswith(part)]
        if not keys or any(k not in b or not a[k].equal(b[k]) for k in keys):
            return n
    return len(prefixes)


def in_half(state: dict) -> dict:
    """``state`` rounded to half precision on the CPU, as a bundle stores an ensemble."""
    import torch

    return {k: v.to("cpu", torch.float16) if v.is_floating_point() else v.cpu() for k, v in state.items()}


def joined_state(
    starting: list[dict], tuned: list[dict], start_kwargs: dict, arch_kwargs: dict
) -> tuple[dict, dict]:
    """The weights and arch kwargs of one ``tile_ensemble`` of the starting model's members
    (``starting``; its arch kwargs ``start_kwargs``) then ``tuned``: the members of one or more
    fine-tunes of it, as many each. Tuned member i shares the parts its fine-tune left as they were
    with starting member ``i % len(starting)``'s trunk."""
    n = len(starting)
    if len(tuned) % n:
        raise ValueError(f"{len(tuned)} fine-tuned networks do not make whole copies of the start's {n}")
    if not tuned:
        return ensemble_state(starting), {**arch_kwargs, "members": n}
    shared = min(equal_parts(starting[i % n], member) for i, member in enumerate(tuned)) - 1
    kwargs = {**arch_kwargs, "members": n + len(tuned)}
    if shared >= 0:
        start_trunks = start_kwargs.get("trunk_of") or list(range(n))
        shared = min(shared, start_kwargs.get("shared_stages", shared))
        kwargs.update(trunk_of=start_trunks * (1 + len(tuned) // n), shared_stages=shared)
    else:
        kwargs.update(trunk_of=None, shared_stages=0)
    return ensemble_state(starting + tuned), kwargs


def with_starting_members(model, arch: str, arch_kwargs: dict, start: Any) -> tuple[Any, dict]:
    """The fine-tuned classifier ``model`` and its starting model's bundle ``start`` as one
    ``tile_ensemble`` (the start's members first), and its arch kwargs.

    A buyer's few photos move a fine-tune towards their look and away from what the starting model
    knew; the mean of the two logits keeps both (output-space ensembling, which Wortsman et al. 2022
    compare with WiSE-FT's weight average). Weights are rounded to half precision, as the bundle
    stores them, so the photos it is calibrated on are scored as triage will score them.
    """
    import torch

    from models.pretrained import read_state_dict
    from models.registry import build_model

    starting = member_states(in_half(read_state_dict(start.weights_path)), start.arch)
    tuned = member_states(in_half(model.state_dict()), arch)
    state, kwargs = joined_state(starting, tuned, start.arch_kwargs, arch_kwargs)
    joined = build_model("tile_ensemble", **{**kwargs, "pretrained": "none"})
    joined.load_state_dict(state, strict=True)  # back to float32 by copy_
    device = next(model.parameters()).device
    return joined.to(device).to(memory_format=torch.channels_last).eval(), kwargs
