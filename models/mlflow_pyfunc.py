"""A Loupe model bundle as an MLflow pyfunc: the bundle folder is the model's one artifact.

``mlflow.pyfunc.load_model(uri).predict(tiles)`` takes float32 tiles N×3×S×S, already normalised
with the bundle's prep settings (what :func:`cv.prep.prepare_tiles` returns), and gives N×F family
probabilities. A classifier also takes ``params={"levels": [...]}``, each tile's pyramid level
(``Tile.scale``): it then gives the tile scores triage takes the max of, with the bundle's memory of
good tiles and per-level calibration (:func:`models.photo.score_tiles`). Loupe itself never goes
through pyfunc: it resolves the registered version to the bundle folder (:mod:`models.refs`) and loads
that; pyfunc is for MLflow's own tools.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

BUNDLE_ARTIFACT = "bundle"
LEVELS_PARAM = "levels"  # a classifier's per-tile pyramid levels (models.photo.score_tiles)


class LoupeBundleModel(mlflow.pyfunc.PythonModel):
    """Runs a bundle's predictor on a batch of tiles (classifier or detector).

    It returns the network's tile probabilities. A classifier's memory of good tiles (models.memory)
    and per-level calibration need each tile's pyramid level, which bare tiles do not carry: given
    ``levels``, it returns the tiles' scores as triage computes them."""

    def load_context(self, context) -> None:
        from models.predictor import load_predictor

        self.bundle_dir = Path(context.artifacts[BUNDLE_ARTIFACT])
        self.predictor = load_predictor(self.bundle_dir, backend="torch", device="cpu", threads=1)

    # np.ndarray is the one hint MLflow neither turns into a schema (the signature is explicit) nor
    # warns about: it warns at import on an untyped predict, past any warnings filter of ours.
    def predict(self, context, model_input: np.ndarray, params=None):
        if isinstance(model_input, dict):  # MLflow hands named tensor inputs over as {name: array}
            model_input = model_input.get("tiles", next(iter(model_input.values())))
        batch = np.asarray(model_input, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected float32 tiles N×3×S×S, got shape {batch.shape}")
        levels = (params or {}).get(LEVELS_PARAM)
        if levels is not None and len(levels) and self.predictor.task == "classifier":
            from models.photo import score_tiles

            return np.asarray(score_tiles(batch, np.asarray(levels, np.float64), self.predictor), np.float32)
        return np.asarray(self.predictor.run(batch), dtype=np.float32)


def bundle_signature(input_size: int, n_families: int, task: str = "classifier"):
    """Input float32 tiles N×3×S×S → output float32 probabilities N×F; a classifier's optional
    ``levels`` parameter gives each tile's pyramid level (empty: the network's probabilities)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    params = ParamSchema([ParamSpec(LEVELS_PARAM, "double", [], (-1,))]) if task == "classifier" else None
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, input_size, input_size), name="tiles")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_families), name="probabilities")]),
        params=params,
    )


def log_bundle_model(
    bundle_dir: Path,
    input_size: int,
    n_families: int,
    registered_model_name: str | None = None,
    name: str = "model",
    task: str = "classifier",
) -> Any:
    """Log ``bundle_dir`` as a pyfunc model in the active run (and register it); returns the ModelInfo."""
    import warnings

    import mlflow

    with warnings.catch_warnings():
        # MLflow warns about cloudpickle and missing input examples; the signature says what goes in.
        warnings.simplefilter("ignore")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=LoupeBundleModel(),
            artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
            signature=bundle_signature(input_size, n_families, task),
            registered_model_name=registered_model_name,
            # Explicit requirements: inferring them would load the model in a subprocess (slow, and noisy).
            pip_requirements=["loupe", "torch", "numpy", "mlflow"],
        )
