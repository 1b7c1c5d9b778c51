"""The defect families and subtypes Loupe flags (see shared/reference/qc-domain.md)."""

from __future__ import annotations

FAMILIES: tuple[str, ...] = ("stitching", "logo", "label")

# COCO category ids are fixed so that datasets, models and reports agree without a lookup.
CATEGORY_IDS: dict[str, int] = {family: i + 1 for i, family in enumerate(FAMILIES)}

SUBTYPES: dict[str, tuple[str, ...]] = {
    "stitching": (
        "skipped_stitch",
        "broken_thread",
        "uneven_stitch_length",
        "wavy_seam",
        "open_seam",
        "puckering",
    ),
    "logo": (
        "offset_logo",
        "smudged_print",
        "partly_missing_print",
        "wrong_colour",
        "missing_logo",
    ),
    "label": (
        "missing_label",
        "crooked_label",
        "torn_label",
        "unreadable_label",
        "misplaced_overprint",
    ),
}

SUBTYPE_FAMILY: dict[str, str] = {s: f for f, subs in SUBTYPES.items() for s in subs}

GOOD = "good"


def coco_categories() -> list[dict]:
    """The COCO ``categories`` list every Loupe dataset uses."""
    return [{"id": CATEGORY_IDS[f], "name": f, "supercategory": "defect"} for f in FAMILIES]
