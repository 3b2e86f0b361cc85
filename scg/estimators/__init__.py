"""The estimators: the :class:`~scg.estimators.estimator.Estimator` facade (options, plan
cache, state) and what it emits per call: the Monte Carlo surrogate
(:mod:`~scg.estimators.monte_carlo`), the online TD estimator (:mod:`~scg.estimators.online`),
and the baselines (:mod:`~scg.estimators.baselines`), each owning its own state.
"""
