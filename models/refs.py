"""Model references: what a user types (``default``, a folder, ``models:/name@alias``) → a bundle folder.

Registered models are downloaded once from the MLflow store into ``$LOUPE_DATA/model-cache`` and
the bundle folder inside the download is returned, so everything downstream works on folders.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# The shipped default models live next to this file, one folder per task.
DEFAULT_DIR = Path(__file__).resolve().parent / "default"
TASKS = ("classifier", "detector")
REGISTERED_NAMES = {"classifier": "loupe-classifier", "detector": "loupe-detector"}
# A bundle folder is recognised by its manifest file (written by models.bundle.save_bundle).
BUNDLE_MARKERS = ("bundle.json", "bundle.yaml", "bundle.yml")

MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class ModelRefError(ValueError):
    """A model reference does not resolve to a bundle folder."""


def loupe_data_dir() -> Path:
    """The data folder: ``$LOUPE_DATA``, default ``./data``."""
    return Path(os.environ.get("LOUPE_DATA", "data"))


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a SQLite store in the data folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(loupe_data_dir() / 'mlflow.db').resolve()}"


def is_bundle_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in BUNDLE_MARKERS)


def find_bundle_dir(root: Path) -> Path | None:
    """``root`` itself if it is a bundle, else the shallowest bundle folder below it."""
    if is_bundle_dir(root):
        return root
    found = sorted((p.parent for m in BUNDLE_MARKERS for p in root.rglob(m)), key=lambda p: len(p.parts))
    return found[0] if found else None


def resolve_model_ref(ref: str, task: str) -> Path:
    """The bundle folder for ``ref``: ``default``, a path, ``models:/name@alias`` or ``models:/name/N``."""
    if task not in TASKS:
        raise ModelRefError(f"task must be one of {TASKS}, got {task!r}")
    ref = str(ref).strip()
    if ref == "default":
        folder = DEFAULT_DIR / task
        if not is_bundle_dir(folder):
            raise ModelRefError(
                f"model ref 'default': no shipped default {task} at {folder}; "
                f"train one with `loupe train {task}` and pass its folder, or a models:/ URI"
            )
        return folder
    if ref.startswith("models:/"):
        return _resolve_registered(ref, task)
    path = Path(ref).expanduser()
    if path.exists():
        bundle = find_bundle_dir(path) if path.is_dir() else None
        if bundle is None:
            raise ModelRefError(
                f"model ref {ref!r} is not a model bundle folder (no {' / '.join(BUNDLE_MARKERS)} in it); "
                f"pass the folder `loupe train` printed"
            )
        return bundle
    raise ModelRefError(
        f"model ref {ref!r} not found: use 'default', a bundle folder, "
        f"'models:/{REGISTERED_NAMES[task]}@champion' or 'models:/{REGISTERED_NAMES[task]}/<version>'"
    )


def _resolve_registered(ref: str, task: str) -> Path:
    match = MODELS_URI.match(ref)
    if not match:
        raise ModelRefError(
            f"model ref {ref!r} is not a registry URI: write 'models:/<name>@<alias>' or "
            f"'models:/<name>/<version>', "
            f"e.g. 'models:/{REGISTERED_NAMES[task]}@champion'"
        )
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = default_tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = match["name"]
    try:
        if match["alias"]:
            version = client.get_model_version_by_alias(name, match["alias"]).version
        else:
            version = client.get_model_version(name, match["version"]).version
    except MlflowException as exc:
        raise ModelRefError(
            f"model ref {ref!r} not found in the MLflow registry at {uri}: {exc.message.splitlines()[0]}. "
            f"Register one with `loupe train {task} ... --register --champion`, "
            f"or set MLFLOW_TRACKING_URI to the store that has it"
        ) from None
    dst = loupe_data_dir() / "model-cache" / name / str(version)
    bundle = find_bundle_dir(dst) if dst.exists() else None
    if bundle is None:
        dst.mkdir(parents=True, exist_ok=True)
        # Ask this store where the version's files are, rather than MLflow's process-wide default store.
        source = client.get_model_version_download_uri(name, version)
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=uri)
        bundle = find_bundle_dir(Path(local))
    if bundle is None:
        raise ModelRefError(
            f"model ref {ref!r} (version {version}) holds no model bundle; "
            f"it was not logged by `loupe train` — register a model with `loupe train {task} --register`"
        )
    return bundle
