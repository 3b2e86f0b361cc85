"""The schema of scg's sites, records and graphs, documented once; every module refers here.

**Roles** (:data:`ROLES`): what a site is.

- ``message``: a coagent's stochastic output (``scg.message``); has a score term unless
  ``reparam``.
- ``env``: environment randomness (``scg.env``); no score term, enumerated by ``check``.
- ``predict``: a predictor (``scg.predict``); ``weight * log p(obs)`` is a cost and a
  supervised term.
- ``reward``: an environment reward (``scg.reward``); a cost without gradient.
- ``cost``: a differentiable objective term (``scg.cost``); a cost with a pathwise gradient.
- ``value``: a learned state value V(s_t) (``scg.value``) for the online estimator: read by TD
  errors, never a cost or a baseline.
- ``escape`` (graph nodes only): the world outside torch, where values left provenance
  tracking (:mod:`scg.compiler.provenance`).

:data:`COSTS` are the roles whose values enter J.

**A site's message.** Every scg site is a Pyro sample site; scg's metadata rides in its
``infer`` dict, as Pyro documents its message dict:

Keys:

- scg_role (str): one of :data:`ROLES` (not ``escape``).
- scg_coagent (str or None): the coagent owning the site.
- scg_time (int): the step the site belongs to (set by the run context).
- scg_base (str): the user's name, before ``@t`` is appended (set by the run context).
- scg_plates (tuple): the enclosing vectorised plates, each ``(name, dim, size, kind)`` with
  kind ``episodes``, ``agents``, ``independent`` (``scg.agents(independent=True)``) or
  ``plate`` (a ``pyro.plate``).
- scg_weight (float): a predictor's weight.
- scg_reparam (bool): a message whose gradient flows pathwise instead of by its score.
- scg_execute (str): an asynchronous unit's execution source: its ``name.exec`` site,
  ``"bit"`` (another coagent's bit) or ``"always"``.
- scg_execution_of (str): on an execution coagent's site, the unit it drives.
- scg_bit (tensor): an asynchronous unit's execution bit (provenance reads its parents).
- scg_state (tuple or None): a message's local state (its ``@scg.coagent`` unit's tensor
  inputs, or ``state=``), detached: the input of a ``critic`` baseline.
- scg_value_shape (tuple): a cost's value shape (a reward may be one number for the batch).

**A recorded site** (:class:`scg.core.record.Site`, one per site of one run):

Keys:

- name: unique in the run (``m@3`` inside ``scg.steps``).
- role, coagent, time, plates: as ``scg_role``, ``scg_coagent``, ``scg_time``,
  ``scg_plates``.
- fn: the distribution (plates already broadcast into it).
- value: the sampled or observed value.
- mask: the bool mask from ``scg.done`` and execution bits (None if none).
- infer: the site's infer dict (the keys above).
- version: the value's version counter when recorded (a later in-place write into a
  sampled value is an error).

**The dependency graph** (:func:`scg.compiler.graph.build`; a networkx DiGraph of one run, one
node per site, structure only: tensors stay in the record). Node attributes:

Keys:

- role, coagent, time, plates: as for a recorded site.
- order (int): position in execution order.
- shape (tuple): the site's batch shape.
- dist (str): the distribution's class name (``"escape"`` for an escape node).
- reparam (bool): a message whose gradient is pathwise.
- execute (str or None): an asynchronous unit's execution source (``name.exec@t``, ``"bit"``
  or ``"always"``); None for synchronous sites.
- execution_of (str or None): on an execution coagent's site, the unit it drives.
- base (str): the user's site name, without ``@t``.
- via (str): on an escape node, the torch operation the value left by.
- owner (str or None): set by :func:`scg.compiler.passes.owned` on unlabelled costs: the
  coagent owning the cost's pathwise gradient.
- downstream (int): set by :func:`scg.compiler.passes.causal` on stochastic sites: the
  costs among the site's descendants, as a bitset over ``g.graph["costs"]``.

Edge attributes (an edge u -> v: v was computed from u's value, or v reads escape node u):

Keys:

- reads (bool): v's distribution (a cost: its value) was computed from u's value.
- mask (bool): v is masked by a value computed from u (its execution bit or ``scg.done``).
- execute (bool): v's execution bit was computed from u.
- (none of these: the conservative escape edge, design.md §3.2.)

**The rolled graph** (:func:`scg.compiler.passes.roll`: one node per base name) keeps the
node attributes above that hold for every step, plus ``times`` (the steps the site occurs at;
None outside ``scg.steps``) and ``after`` (outside the loop and after it); its edges have
``lags`` (sorted ``t_v - t_u``), ``back`` (a lag > 0), ``read_lags`` and the three flags
(true if any occurrence has them).
"""

ROLES = ("message", "env", "predict", "reward", "cost", "value")
COSTS = ("predict", "reward", "cost")
GRAPH_ROLES = ROLES + ("escape",)
