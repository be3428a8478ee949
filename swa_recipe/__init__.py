"""The framework-free core of swa-paddle: config, schedules, the epoch and batch loop
(``loop.Trainer``, the seam the twins fill in), logs, run directory, checkpoint rules, BN and
dropout rules, device and CPU settings, and data input (``swa_recipe.data``). It imports
neither Paddle nor torch, nor anything above it (tests/test_imports.py)."""
