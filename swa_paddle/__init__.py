"""The Paddle twin: models, Paddle's missing ``swa_utils``, loaders, checkpoints and the trainer."""
