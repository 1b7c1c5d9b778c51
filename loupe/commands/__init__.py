"""One module per stage; each registers its verbs on the apps in :mod:`loupe.apps` when imported.

Heavy imports (torch, cv2, mlflow) happen inside the commands so that ``loupe --help`` is instant.
"""
