"""The parameters an estimator has met, per coagent: the one object that keeps them.

Parameters are keyed by ``id`` for speed; ids do not survive ``copy.deepcopy`` or pickling, so
:meth:`CoagentParameters.__setstate__` re-keys them by the copied tensors themselves.
"""


class CoagentParameters:
    """theta_i of every coagent met so far (the union over analysed runs), the parameters shared
    between coagents, and the online critic's (reached from ``scg.value`` sites)."""

    def __init__(self):
        self.by_coagent = {}   # coagent -> {id(p): p}, in discovery order
        self.values = {}       # {id(p): p} reached from scg.value sites
        self.shared = {}       # id(p) -> [coagents] for a parameter of more than one
        self.memo = {}         # of(), critic(), owner(): derived, dropped by add()

    def add(self, owners):
        """Merge what one run reached (:class:`scg.compiler.owners.Owners`)."""
        for c, ps in owners.reach.items():
            self.by_coagent.setdefault(c, {}).update(ps)
        self.values.update(owners.values)
        ids = {}
        for c, ps in self.by_coagent.items():
            for k in ps:
                ids.setdefault(k, []).append(c)
        self.shared = {k: cs for k, cs in ids.items() if len(cs) > 1}
        self.memo = {}

    def remembered(self, key, compute):
        """``compute()``, kept until the next :meth:`add` (runs call these per window)."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def owner(self):
        """id(p) -> the first coagent (by name) that reaches p; the online critic's
        parameters are not in it."""
        def first():
            out = {}
            for c in sorted(self.by_coagent):
                for k in self.by_coagent[c]:
                    out.setdefault(k, c)
            return out
        return self.remembered("owner", first)

    def coagents(self):
        return sorted(self.by_coagent)

    def of(self, coagent=None):
        """The parameters of one coagent (every coagent's, each once, if None)."""
        return list(self.remembered(("of", coagent), lambda: self._of(coagent)))

    def _of(self, coagent):
        seen, out = set(), []
        for c, ps in self.by_coagent.items():
            if coagent is None or c == coagent:
                out += [p for p in ps.values() if id(p) not in seen and not seen.add(id(p))]
        return out

    def critic(self):
        """The ``scg.value`` sites' parameters that no coagent's sites reach (all of
        ``values`` unless a value site reads a coagent's parameters)."""
        def unowned():
            owned = {k for ps in self.by_coagent.values() for k in ps}
            return [p for k, p in self.values.items() if k not in owned]
        return list(self.remembered("critic", unowned))

    def names(self):
        """``COAGENT.k`` for the k-th parameter of each coagent (a shared one under its first)."""
        out = {}
        for c, ps in self.by_coagent.items():
            for k, p in enumerate(ps.values()):
                out.setdefault(id(p), f"{c}.{k}")
        return out

    def __setstate__(self, state):
        moved = {k: id(p) for ps in state["by_coagent"].values() for k, p in ps.items()}
        moved.update({k: id(p) for k, p in state["values"].items()})
        self.by_coagent = {c: {id(p): p for p in ps.values()}
                           for c, ps in state["by_coagent"].items()}
        self.values = {id(p): p for p in state["values"].values()}
        self.shared = {moved.get(k, k): cs for k, cs in state["shared"].items()}
        self.memo = {}
