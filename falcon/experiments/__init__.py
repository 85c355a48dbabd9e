"""Compress-and-fine-tune experiments and their results store.

* :mod:`falcon.experiments.pipeline` — :func:`run_experiment` (baseline → convert → evaluate →
  fine-tune → evaluate), DDP-ready under torchrun;
* :mod:`falcon.experiments.sweep` — a sweep over conv types and ranks, and :class:`SweepRunner`, a
  background-thread runner with progress and a stop flag (for the app);
* :mod:`falcon.experiments.store` — the SQLite results store (:func:`list_runs`, :func:`accuracy_points`);
* :mod:`falcon.experiments.data` — digits (bundled), CIFAR-10/100 and SVHN.

Importing this package is light: torch is imported by the modules that need it.
"""
