"""The runtime on Pyro's handler stack: what happens while a network runs.

- :mod:`~scg.core.schema`: the roles and attributes of sites, messages and graph nodes,
  documented once.
- :mod:`~scg.core.context`: one run's state (time index, renaming, ``done`` masks) and the fast
  path that skips Pyro's full stack.
- :mod:`~scg.core.asynchrony`: asynchronous units (execution bits, held outputs).
- :mod:`~scg.core.record`: the light recorder that keeps a run's sites in order.
- :mod:`~scg.core.terms`: the per-site tensors (log-probabilities, costs, masks).
"""
