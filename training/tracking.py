"""MLflow tracking: one run per training / validation, its config, data version, metrics, plots and model.

Default store: SQLite in the data folder (``sqlite:///$LOUPE_DATA/mlflow.db``) with artifacts in
``$LOUPE_DATA/mlartifacts`` (the experiment is created with that location, so nothing lands in
./mlruns); ``MLFLOW_TRACKING_URI`` overrides both.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from models.refs import REGISTERED_NAMES, default_tracking_uri, loupe_data_dir

CHAMPION = "champion"


def tracking_uri() -> str:
    return default_tracking_uri()


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a local SQLite store while it is created or changed in shape.

    Two trainings started together on a fresh machine would otherwise both run MLflow's schema
    migration on the new ``mlflow.db`` and one fails ("duplicate column"), or both create the
    experiment. Server stores need no lock.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_experiment(name: str, uri: str | None = None) -> str:
    """Point MLflow at the store and return the experiment id, creating it with our artifact location."""
    import mlflow

    # Decide before set_tracking_uri, which exports MLFLOW_TRACKING_URI itself.
    local_store = uri is None and "MLFLOW_TRACKING_URI" not in os.environ
    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with store_lock(uri):
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        artifact_location = None
        if local_store or uri == f"sqlite:///{(loupe_data_dir() / 'mlflow.db').resolve()}":
            root = (loupe_data_dir() / "mlartifacts").resolve()
            root.mkdir(parents=True, exist_ok=True)
            artifact_location = root.as_uri()
        return mlflow.create_experiment(name, artifact_location=artifact_location)


def git_commit() -> str | None:
    """The repository's HEAD commit (with ``-dirty`` when the tree has changes), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, int | float | str | bool) or value is None else str(value)
    return out


@contextmanager
def tracked_run(
    experiment: str,
    run_name: str | None = None,
    config: dict | None = None,
    config_file: Path | None = None,
    data_version: str | None = None,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
) -> Iterator[Any]:
    """Start an MLflow run logging the resolved config (params + YAML artifact), data version and commit."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; put it back afterwards so a later run with
    # another $LOUPE_DATA in this process (tests, notebooks) does not write into this store.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _run(mlflow, experiment, run_name, config, config_file, data_version, tags, run_id) as run:
            yield run
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


@contextmanager
def _run(mlflow, experiment, run_name, config, config_file, data_version, tags, run_id) -> Iterator[Any]:
    experiment_id = ensure_experiment(experiment)
    all_tags = {"loupe.data_version": data_version or "unknown", **(tags or {})}
    commit = git_commit()
    if commit:
        all_tags["mlflow.source.git.commit"] = commit
    if run_id:  # resuming: the run already holds the config
        with mlflow.start_run(run_id=run_id) as run:
            yield run
        return
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=all_tags) as run:
        if config:
            params = {k: v for k, v in _flatten(config).items() if v is not None}
            # MLflow caps a param value at 6000 chars and a batch at 100 params.
            items = [(k, str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                mlflow.log_params(dict(items[i : i + 100]))
        if config_file is not None and Path(config_file).exists():
            mlflow.log_artifact(str(config_file), artifact_path="config")
        if data_version:
            mlflow.log_param("data_version", data_version)
        yield run


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log finite metrics; MLflow metric names may not hold some characters, so '/' stays but ' ' goes."""
    import mlflow

    clean = {
        k.replace(" ", "_").replace("@", "_at_"): float(v)
        for k, v in metrics.items()
        if v is not None and not (isinstance(v, float) and math.isnan(v))
    }
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_figure(fig: Any, name: str) -> None:
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_figure(fig, f"plots/{name}")
    plt.close(fig)


def pr_curves_figure(scores: np.ndarray, labels: np.ndarray, families) -> Any:
    """Per-family precision-recall curves on validation photos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for i, family in enumerate(families):
        y = np.asarray(labels)[:, i].astype(bool)
        if y.any():
            p, r, _ = precision_recall_curve(y, np.asarray(scores)[:, i])
            ax.plot(r, p, label=f"{family} (n={int(y.sum())})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_title("validation photos: precision-recall per family")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def confusion_figure(confusion: dict[str, dict[str, int]]) -> Any:
    """One 2×2 matrix per family at the flag threshold (rows: truth, columns: flagged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(confusion)
    fig, axes = plt.subplots(1, len(families), figsize=(3.2 * len(families), 3), dpi=100, squeeze=False)
    for ax, family in zip(axes[0], families, strict=True):
        c = confusion[family]
        m = np.array([[c["tp"], c["fn"]], [c["fp"], c["tn"]]])
        ax.imshow(m, cmap="Blues")
        for (r, q), v in np.ndenumerate(m):
            ax.text(q, r, str(v), ha="center", va="center")
        ax.set_xticks([0, 1], ["flagged", "passed"])
        ax.set_yticks([0, 1], ["defect", "good"])
        ax.set_title(family)
    fig.tight_layout()
    return fig


def predictions_grid_figure(panels: list[tuple[np.ndarray, str]], columns: int = 4) -> Any:
    """A grid of validation photos (RGB arrays, boxes already drawn) with a caption each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, math.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image, caption) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(image)
        ax.set_title(caption, fontsize=7)
    fig.tight_layout()
    return fig


def log_dict_artifact(data: dict, name: str) -> None:
    import mlflow

    mlflow.log_dict(data, name)


def log_evaluation(report: dict) -> None:
    """A photo report (:func:`training.evaluate.photo_report`) as ``evaluation/report.json``, and its
    photo by photo table also as ``evaluation/photos.csv``, which opens in a spreadsheet."""
    import mlflow

    from training.engine import _jsonable
    from training.evaluate import photo_rows_csv

    log_dict_artifact(_jsonable(report), "evaluation/report.json")
    if report.get("photo_rows"):
        mlflow.log_text(photo_rows_csv(report["photo_rows"]), "evaluation/photos.csv")


def log_bundle(
    bundle_dir: Path,
    task: str,
    input_size: int,
    n_families: int,
    register: bool = False,
    champion: bool = False,
) -> dict[str, Any]:
    """Log the bundle as a pyfunc model in the active run; register it and set ``champion`` when asked.

    Returns ``{"model_uri", "registered_name", "version"}`` (name/version None when not registered).
    """

    import mlflow

    name = REGISTERED_NAMES[task] if (register or champion) else None
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)  # its cloudpickle notice: we pickle only a reference to our class
    try:
        from models.mlflow_pyfunc import log_bundle_model

        info = log_bundle_model(bundle_dir, input_size, n_families, registered_model_name=name, task=task)
    finally:
        pyfunc_log.setLevel(level)
    version = None
    if name:
        version = str(info.registered_model_version)
        if champion:
            mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION, version)
    return {"model_uri": info.model_uri, "registered_name": name, "version": version}


def make_champion(ref: str, task: str) -> dict[str, str | None]:
    """Point the registry's ``champion`` alias at ``ref``: a registered version (``models:/name/N``)
    or a bundle folder, which is logged and registered first. ``{"name", "version", "previous"}``.

    Why: a fine-tune is judged on held-out photos (``loupe val --against``) after training, so the
    alias is set then, not only by ``loupe train --champion``.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from models.bundle import load_bundle
    from models.refs import MODELS_URI, ModelRefError, resolve_model_ref

    folder = resolve_model_ref(ref, task)  # names the fix for a ref that is not there
    bundle = load_bundle(folder)
    if bundle.task != task:
        raise ModelRefError(f"model ref {ref!r} is a {bundle.task}, not a {task}: pass --task {bundle.task}")
    name = REGISTERED_NAMES[task]
    uri = tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        previous = str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:  # no model or no champion yet
        previous = None
    match = MODELS_URI.match(str(ref).strip())
    if match and match["name"] != name:
        raise ModelRefError(f"model ref {ref!r} is not a version of {name}: the {task} champion is one")
    if match and match["version"]:
        version = match["version"]
        client.set_registered_model_alias(name, CHAMPION, version)
    elif match:  # models:/name@alias: the version that alias points at
        version = client.get_model_version_by_alias(name, match["alias"]).version
        client.set_registered_model_alias(name, CHAMPION, version)
    else:
        with tracked_run(
            f"loupe-{task}", f"register-{bundle.name}", {"bundle": bundle.ref, "folder": str(folder)},
            tags={"loupe.task": "register"},
        ):  # fmt: skip
            logged = log_bundle(
                folder, task, bundle.prep["input_size"], len(bundle.families), register=True, champion=True
            )
        version = logged["version"]
    return {"name": name, "version": str(version), "previous": previous}
