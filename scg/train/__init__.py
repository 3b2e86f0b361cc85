"""Training: :mod:`~scg.train.trainer` (the loop), :mod:`~scg.train.optimizers` (optimiser
groups and step-size schedules), :mod:`~scg.train.logs` (CSV, TensorBoard, plots) and
:mod:`~scg.train.checkpoint` (exact save and resume).
"""
