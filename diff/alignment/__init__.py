"""The step-by-step alignment of the twins, one module per step (``forward``, ``loss``, ``data``,
``lr``, ``backward``, ``swa``, ``metric``, ``train``, and ``long`` for ``--long``), what they
share (``context``: thresholds, configs; ``twins``: models, breaks, probes, loaders) and the
report (``report``: reprod_log files, summary rows and table). ``diff/align.py`` runs them."""
