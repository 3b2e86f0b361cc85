"""``scg.derive``: each coagent's local learning rule, read off the analysed graph.

The rule is what the compiled estimator does, written in the notation of the coagent papers
(Thomas & Barto 2011; Kostas, Nota & Thomas 2020). For coagent i with local state x_t (the site
values its distribution reads, ``m_{t-k}`` for a read of step t - k) and output m_t:

    Δθ_i ∝ Σ_t γ^t e_t ∇ log π_i(m_t | x_t) (G_t − b_t)      score term (e_t: execution bit)
         + Σ_t γ^t w ∇ log q_i(y_t | z_t)                     predictor (supervised) term
         + Σ_t γ^t ∇ c_t                                      pathwise costs it owns
    G_t  = Σ_{c credited} γ^{t_c − t} c                        costs downstream of m_t

Everything is read from the *rolled* graph (one rule per site name, not per step) and the causal
pass of the unrolled run (which costs each site is credited with, from which step on). Patterns
the option-critic is made of are recognised and named (Bacon, Harb & Precup 2017): a Bernoulli
unit whose output is another unit's execution bit is a termination unit when it reads that
unit's previous output (β(s_t, ω_{t−1})) or no earlier unit output at all, the unit it drives a
policy over options, and a unit reading that unit's output an intra-option policy.
"""

from dataclasses import dataclass, field

from ..compiler.passes import roll, rolled_credit
from ..errors import ScgError
from ..estimators.estimator import compile

BASELINES = {   # the baseline line of a unit: b in symbols, then in words
    "none": "b = 0 (no baseline)",
    "avg": "b = a decaying average of this site's past G (updated after use)",
    "loo": "b = the mean of G over the other episodes of the batch (leave-one-out)",
    "critic": "b = V_i(x), a critic of the local state x regressed on G (in the local loss)",
}
LATER = "t'"  # the summation index of a return


@dataclass
class Unit:
    """One stochastic site of a coagent, as a rule: ``e · γ^t ∇ log π(name | inputs) (G − b)``.

    ``inputs``: (site, lag) pairs read by its distribution; ``bit``: the site(s) its execution
    bit comes from (None when it always executes); ``credit``: (cost, first lag, last lag,
    predictor's coagent or None) of the costs in its return; ``reading``: a recognised role,
    e.g. the option-critic's.
    """

    name: str
    dist: str
    inputs: list
    stepped: bool
    bit: list = None
    credit: list = field(default_factory=list)
    reading: str = ""
    episodes: int = 0   # the size of its innermost scg.episodes plate (0: none)


@dataclass
class Rule:
    """A coagent's local learning rule: its units, predictor terms and pathwise costs."""

    coagent: str
    units: list = field(default_factory=list)
    predictors: list = field(default_factory=list)  # (name, inputs, stepped)
    costs: list = field(default_factory=list)       # (name, stepped)
    shared_with: list = field(default_factory=list)
    execution_of: str = None


class Derivation:
    """The learning rules of a compiled network: ``str()`` is plain text (words and symbols),
    :meth:`latex` the same rules in LaTeX, ``rules`` the structured form (coagent -> Rule)."""

    def __init__(self, rules, gamma, baseline, discount_score, estimator, objective,
                 own=False):
        self.rules, self.gamma, self.baseline = rules, gamma, baseline
        self.discount_score, self.estimator, self.objective = discount_score, estimator, objective
        self.own = own   # costs addressed by to=: each coagent climbs its own J_i (§8)

    def __getitem__(self, coagent):
        return self.rules[coagent]

    def __str__(self):
        return self.text()

    def __repr__(self):
        return f"Derivation({sorted(self.rules)})"

    def _repr_latex_(self):
        return self.latex()

    # ---- plain text ----------------------------------------------------------------------
    def text(self):
        """Each coagent's rule in words and plain-text symbols."""
        n = TEXT
        lines = []
        for c, rule in self.rules.items():
            lines.append(f"coagent {c}" + (f"  (execution coagent of {rule.execution_of})"
                                            if rule.execution_of else ""))
            lines.append(f"  Δθ_{c} ∝ " + " + ".join(self._terms(rule, n)))
            for u in rule.units:
                lines += self._unit_text(u)
            for name, inputs, stepped in rule.predictors:
                lines.append(f"  predictor {name}: supervised term {self._disc(stepped, n)}∇ log "
                             f"q_{c}({n.sym(name, 0, stepped)} | {n.args(inputs, stepped)}): "
                             "raise the likelihood of the observed data; its log-likelihood is "
                             "also a cost credited to every site upstream of it")
            for name, stepped in rule.costs:
                lines.append(f"  cost {name}: pathwise term {self._disc(stepped, n)}∇ "
                             f"{n.sym(name, 0, stepped)} (differentiated directly)")
            if rule.shared_with:
                lines.append(f"  shares parameters with {', '.join(rule.shared_with)}: a shared "
                             "parameter's gradient is the sum of the sharing coagents' rules "
                             "(coagent policy gradient theorem)")
        lines += self._footer()
        return "\n".join(lines)

    def _unit_text(self, u):
        t = TEXT.sub(u.stepped)
        lines = [f"  unit {u.name} ~ {u.dist}: local state x{t} = "
                 f"({TEXT.args(u.inputs, u.stepped)})"]
        if u.reading:
            lines.append(f"    reads as: {u.reading}")
        if u.bit:
            lines.append(f"    masked: e{t} = {' & '.join(u.bit)} (1: draws afresh; 0: holds "
                         f"{TEXT.sym(u.name, 1, True)}, no term; asynchronous coagent theorem)")
        ret = " + ".join(self._credit(u, TEXT)) or "0 (no cost downstream: the term vanishes)"
        lines.append(f"    return G{t} = {ret}")
        kind = self.baseline_of(u)
        shown = "" if kind == self.baseline else f"(auto → {kind}) "
        lines.append(f"    baseline {shown}{BASELINES[kind]}")
        if u.dist == "Bernoulli":
            lines.append(f"    in expectation over {u.name}{t}: ∇P({u.name}{t}=1 | x{t}) · "
                         f"(E[G{t} | {u.name}{t}=1] − E[G{t} | {u.name}{t}=0])")
        return lines

    def baseline_of(self, unit):
        """The baseline the unit gets: ``auto`` is leave-one-out inside ``scg.episodes(N)``
        with N >= 2, else the decaying average (as :class:`scg.estimators.baselines.Auto`)."""
        if self.baseline != "auto":
            return self.baseline
        return "loo" if unit.episodes >= 2 else "avg"

    def _footer(self):
        on = ("each coagent's own objective J_i (its costs addressed by to=)" if self.own
              else "J")
        lines = [f"(γ = {self.gamma:g}; baseline {self.baseline}; Δθ is the ascent direction "
                 f"on {on}, the negative gradient of the local loss)"]
        if not self.discount_score:
            lines.append("(discount_score=False: the common rule without γ^t on the score term, "
                         "as in many texts; not ∇J: biased for γ < 1)")
        if self.objective == "mean":
            lines.append("(objective='mean': every term is divided by the horizon T)")
        if self.estimator == "td":
            lines.append("(estimator='td': G_t − b_t is replaced by the TD(λ) error δ_t = r_t + "
                         "γV(s_{t+1}) − V(s_t) with eligibility traces; biased unless V is exact)")
        return lines

    # ---- LaTeX ---------------------------------------------------------------------------
    def latex(self):
        """The rules as a LaTeX ``align*`` block: one Δθ line and one return per unit."""
        n = LATEX
        rows = []
        for c, rule in self.rules.items():
            rows.append(f"\\Delta\\theta_{{{n.name(c)}}} &\\propto "
                        + " + ".join(self._terms(rule, n)))
            for u in rule.units:
                rows.append(f"G^{{{n.name(u.name)}}}{n.sub(u.stepped)} &= "
                            + (" + ".join(self._credit(u, n)) or "0"))
        return "\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}"

    # ---- shared by both notations ----------------------------------------------------------
    def _disc(self, stepped, n):
        return n.gamma_t if stepped and self.gamma != 1.0 else ""

    def _terms(self, rule, n):
        """The summands of Δθ_i: score terms, predictor terms, pathwise costs."""
        c = rule.coagent
        out = []
        for u in rule.units:
            disc = self._disc(u.stepped, n) if self.discount_score else ""
            e = n.bit if u.bit else ""
            out.append(f"{n.sigma(u.stepped)}{disc}{e}{n.grad_log}{n.pi(c)}("
                       f"{n.sym(u.name, 0, u.stepped)}{n.given}{n.args(u.inputs, u.stepped)})"
                       f"{n.advantage(u.name, u.stepped)}")
        for name, inputs, stepped in rule.predictors:
            out.append(f"{n.sigma(stepped)}{self._disc(stepped, n)}{n.grad_log}{n.q(c)}("
                       f"{n.sym(name, 0, stepped)}{n.given}{n.args(inputs, stepped)})")
        for name, stepped in rule.costs:
            out.append(f"{n.sigma(stepped)}{self._disc(stepped, n)}{n.grad}"
                       f"{n.sym(name, 0, stepped)}")
        return out or ["0"]

    def _credit(self, u, n):
        """The summands of a unit's return G: each credited cost, from the step it starts."""
        out = []
        for cost, lo, hi, owner in u.credit:
            if not u.stepped or lo is None:
                out.append(n.cost(cost, owner, None))
            elif lo == hi:
                g = n.gamma_k(lo) if lo and self.gamma != 1.0 else ""
                out.append(g + n.cost(cost, owner, n.shift(lo)))
            else:
                g = n.gamma_later if self.gamma != 1.0 else ""
                out.append(n.later(lo) + g + n.cost(cost, owner, LATER))
        return out


class Notation:
    """The symbols of one notation (plain text or LaTeX): names, subscripts, sums, terms."""

    def __init__(self, latex):
        self.tex = latex
        self.gamma_t = r"\gamma^{t}\," if latex else "γ^t "
        self.gamma_later = r"\gamma^{t'-t}" if latex else "γ^(t'−t) "
        self.bit = r"e_t\," if latex else "e_t "
        self.grad_log = r"\nabla\log " if latex else "∇ log "
        self.grad = r"\nabla " if latex else "∇ "
        self.given = r"\mid " if latex else " | "

    def name(self, x):
        return r"\mathrm{" + str(x).replace("_", r"\_") + "}" if self.tex else str(x)

    def sub(self, stepped):
        return "_t" if stepped else ""

    def sigma(self, stepped):
        return (r"\sum_t " if self.tex else "Σ_t ") if stepped else ""

    def shift(self, k):
        return "t" if k == 0 else f"t+{k}"

    def gamma_k(self, k):
        return f"\\gamma^{{{k}}}" if self.tex else f"γ^{k} "

    def later(self, lo):
        return f"\\sum_{{t' \\ge {self.shift(lo)}}} " if self.tex else \
            f"Σ_{{t' ≥ {self.shift(lo)}}} "

    def sym(self, x, lag, stepped):
        """``m_t``, ``m_{t−1}``, or ``m`` outside steps."""
        if not stepped:
            return self.name(x)
        if self.tex:
            return f"{self.name(x)}_{{{'t' if lag == 0 else f't-{lag}'}}}"
        return f"{x}_t" if lag == 0 else f"{x}_{{t−{lag}}}"

    def args(self, inputs, stepped):
        """A local state: its sites with their lags; three or more consecutive earlier steps
        of one site as a range (``s_{t−k…t−1}``: a state computed from the whole history)."""
        out = []
        for x, lags in _by_site(inputs):
            if not stepped or lags == [None]:
                out.append(self.name(x))
                continue
            for lo, hi in _runs(lags):
                if lo == 0:
                    out.append(self.sym(x, 0, True))
                    lo = 1
                if lo > hi:
                    continue
                if hi - lo >= 2:
                    dots = r"\ldots " if self.tex else "…"
                    minus = "-" if self.tex else "−"
                    out.append(f"{self.name(x)}_{{t{minus}{hi}{dots}t{minus}{lo}}}")
                else:
                    out += [self.sym(x, k, True) for k in range(lo, hi + 1)]
        return ", ".join(out) or (r"\text{model inputs}" if self.tex else "model inputs")

    def pi(self, c):
        return f"\\pi_{{{self.name(c)}}}" if self.tex else f"π_{c}"

    def q(self, c):
        return f"q_{{{self.name(c)}}}" if self.tex else f"q_{c}"

    def advantage(self, x, stepped):
        t = self.sub(stepped)
        if self.tex:
            return f"\\,(G^{{{self.name(x)}}}{t} - b^{{{self.name(x)}}}{t})"
        return f" (G^{x}{t} − b^{x}{t})"

    def cost(self, x, owner, t):
        """A credited cost at time ``t``: its value, or a predictor's log-likelihood."""
        v = self.name(x) + ("" if t is None else (f"_{{{t}}}" if self.tex else f"_{t}"))
        if owner is None:
            return v
        return f"\\log q_{{{self.name(owner)}}}({v})" if self.tex else f"log q_{owner}({v})"


TEXT, LATEX = Notation(latex=False), Notation(latex=True)


def _by_site(inputs):
    """(site, lag) pairs -> [(site, sorted lags)] in first-seen order."""
    out = {}
    for x, lag in inputs:
        out.setdefault(x, []).append(lag)
    return [(x, sorted(ls) if None not in ls else [None]) for x, ls in out.items()]


def _runs(lags):
    """Sorted ints -> maximal runs of consecutive values, as (first, last)."""
    runs = []
    for k in lags:
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return [tuple(r) for r in runs]


# ---- reading the graph ---------------------------------------------------------------------
def rules(g, shared=None):
    """Coagent -> :class:`Rule` for the unrolled graph ``g`` of one analysed run.

    ``shared``: coagent -> other coagents it shares parameters with (from the estimator)."""
    r = roll(g)
    credit = rolled_credit(g)
    order = sorted(r, key=lambda n: r.nodes[n]["order"])
    out = {}

    def rule(c):
        if c not in out:
            out[c] = Rule(c, shared_with=sorted((shared or {}).get(c, ())))
        return out[c]

    for n in order:
        a = r.nodes[n]
        stepped = a["times"] is not None
        if a["role"] == "message" and not a["reparam"]:
            u = Unit(n, a["dist"], _inputs(r, n), stepped, bit=_bit(r, n),
                     credit=_credit(r, n, credit), episodes=_episodes(a["plates"]))
            rule(a["coagent"]).units.append(u)
            if a.get("execution_of"):
                rule(a["coagent"]).execution_of = a["execution_of"]
        elif a["role"] == "predict":
            rule(a["coagent"]).predictors.append((n, _inputs(r, n), stepped))
        elif a["role"] == "cost":
            owner = a.get("owner") or a["coagent"]
            if owner is not None:
                rule(owner).costs.append((n, stepped))
    _read_options(r, out)
    return out


def _inputs(r, n):
    """The sites n's distribution reads, with lags (its execution bit's sources excluded)."""
    out = []
    for p in sorted(r.predecessors(n), key=lambda p: r.nodes[p]["order"]):
        e = r.edges[p, n]
        stepped = r.nodes[n]["times"] is not None and r.nodes[p]["times"] is not None
        out += [(p, lag if stepped else None) for lag in e.get("read_lags", ())]
    return _held(r, out)


def _held(r, inputs):
    """Drop what an asynchronous unit's held output carries: reading unit A at lag k reads
    A's last draw, which may be from any earlier step, and the bits that held it; those reads
    are A's (A_{t−k} is "held"), not separate inputs."""
    first = {}
    for x, lag in inputs:
        if lag is not None and r.nodes[x].get("execute") not in (None, "always"):
            first[x] = min(first.get(x, lag), lag)
    carried = {b: k0 for a, k0 in first.items() for b in _bit(r, a) or ()}
    return [(x, lag) for x, lag in inputs
            if not (x in first and lag > first[x]) and not (x in carried and lag is not None
                                                            and lag >= carried[x])]


def _bit(r, n):
    """The sites n's execution bit comes from, or None for a synchronous unit."""
    if r.nodes[n].get("execute") in (None, "always"):
        return None
    return sorted(p for p in r.predecessors(n) if r.edges[p, n].get("execute")) or None


def _credit(r, n, credit):
    out = []
    for c in sorted((c for (s, c) in credit if s == n), key=lambda c: r.nodes[c]["order"]):
        lags = credit[(n, c)]
        stepped = r.nodes[c]["times"] is not None
        owner = r.nodes[c]["coagent"] if r.nodes[c]["role"] == "predict" else None
        out.append((c, lags[0] if stepped else None, lags[-1] if stepped else None, owner))
    return out


def _read_options(r, out):
    """Name the option-critic's three units where the graph has their shape."""
    units = {u.name: (c, u) for c, rule in out.items() for u in rule.units}
    for name, (_, u) in units.items():
        if not u.bit:
            continue
        for b in u.bit:
            if b in units and units[b][1].dist == "Bernoulli" and not r.nodes[b].get(
                    "execution_of") and _may_end(units[b][1], name, units):
                units[b][1].reading = (
                    f"termination unit of {name}: E[G_t | {b}_t=1] − E[G_t | {b}_t=0] = "
                    f"V(s_t) − Q(s_t, {name}_{{t−1}}), so its expected update is "
                    f"−∇β(x_t) · A(s_t, {name}_{{t−1}}): Bacon et al.'s termination gradient")
                u.reading = (f"policy over options: draws {name}_t where {b}_t = 1, G_t samples "
                             f"Q_Ω(s_t, {name}_t)")
                for other, (_, v) in units.items():
                    if other not in (name, b) and (name, 0) in v.inputs:
                        v.reading = (f"intra-option policy of option {name}_t: G_t samples "
                                     f"Q_U(s_t, {name}_t, {other}_t), so its expected update is "
                                     "Bacon et al.'s intra-option policy gradient")


def _may_end(unit, name, units):
    """Whether a bit unit gating ``name`` reads like a termination function β(s_t, ω_{t−1}):
    it reads the option it may end (its earlier output), or no earlier output of any unit (an
    online step, whose previous option comes in as an argument). A unit that reads another
    unit's earlier output but not the option's is a gate of another kind."""
    earlier = {x for x, lag in unit.inputs if lag is not None and lag >= 1 and x in units}
    return name in earlier or not earlier


def derive(model, *args, est=None, kwargs=None, **options):
    """Each coagent's learning rule (a :class:`Derivation`; ``print`` it, or ``.latex()``).

    The rule is that of an estimator: ``est``, or ``scg.compile(model, **options)``. It takes
    the compile options as ``scg.compile`` does, so ``scg.derive(model, *args)`` shows the
    defaults (γ = 1, ``baseline="auto"``) and ``scg.derive(model, *args, gamma=0.9,
    baseline="loo")`` the rule of ``scg.compile(model, gamma=0.9, baseline="loo")``. With the
    signalling network of the first tutorial:

    ```python
    rules = scg.derive(signalling, state, gamma=0.9, baseline="loo")
    assert rules.gamma == 0.9 and "leave-one-out" in str(rules)
    ```

    Args:
        model: an ``@scg.network`` function.
        *args: its arguments (one run is traced to read the structure).
        est: a compiled estimator whose options (γ, baseline, estimator, ...) the rule shows;
            exclusive with ``options``.
        kwargs: the model's keyword arguments, a dict (None: none).
        **options: ``scg.compile`` options (``gamma``, ``baseline``, ``discount_score``,
            ``objective``, ``estimator``, ...) of the estimator compiled when ``est`` is None.

    References: Thomas & Barto 2011; Kostas, Nota & Thomas 2020; Bacon, Harb & Precup 2017.
    """
    if est is not None and options:
        raise ScgError(f"scg.derive: give est= or compile options {sorted(options)}, not both "
                       "(the rule is that of est, compiled with its own options)")
    est = est if est is not None else compile(model, **options)
    g = est.graph(*args, **(kwargs or {}))
    shared = {}
    for cs in est.shared.values():
        for c in cs:
            shared.setdefault(c, set()).update(set(cs) - {c})
    o = est.options
    return Derivation(rules(g, shared), est.gamma, o["baseline"], o["discount_score"],
                      o["estimator"], o["objective"], own=g.graph.get("objectives") is not None)


def _episodes(plates):
    sizes = [size for _, _, size, kind in plates or () if kind == "episodes"]
    return sizes[-1] if sizes else 0
