"""What a researcher does with a network besides training it: :mod:`~scg.tools.check` (the
estimator against exact enumeration or finite differences, an independent oracle),
:mod:`~scg.tools.derive` (each coagent's learning rule) and :mod:`~scg.tools.render` (pictures).
"""
