"""The compiler: from one recorded run to a cached plan.

In pipeline order: :mod:`~scg.compiler.provenance` (data flow and escapes, by replaying or
watching the run), :mod:`~scg.compiler.guards` (what a cached plan holds for),
:mod:`~scg.compiler.graph` (the dependency graph), :mod:`~scg.compiler.passes` (graph -> new
graph: owners, causal credit, roll and unroll over time), :mod:`~scg.compiler.plan` (the
tensor recipe the estimator applies per call).
"""
