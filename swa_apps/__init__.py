"""The applications above the twins: the command lines (train, eval, convert, predict,
export, infer) and the one place that chooses a twin (``swa_apps.twins``)."""
