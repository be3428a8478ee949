"""The PyTorch twin: the same models, loaders, checkpoints and trainer as ``swa_paddle``."""
