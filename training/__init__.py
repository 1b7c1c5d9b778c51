"""training: training loops, evaluation, threshold calibration, MLflow tracking, export."""
