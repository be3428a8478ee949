"""Study tooling above everything else: the grid runner, summaries, extensions, provenance and
loss landscapes. It runs ``train.py`` from a source checkout, so the wheel does not ship it."""
