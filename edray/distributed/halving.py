"""Budget-scaled successive halving: early stopping that ranks ED configs only once they met every class.

Why not rungs inside one run. A rung at epoch e of a 40-epoch ED run compares trials
that are in different grades, or in the same grade with different classes and a
different share of the run left. Ranking on accuracy over the classes seen so far, among
trials in the same grade, is fair but says nothing: on 16 digits configs its Spearman
correlation with final validation accuracy was 0.02 at epoch 4, -0.04 at epoch 8 and 0.03
at epoch 16. Rungs counting epochs in the final grade (``asha``) are fair and
informative, but never touch the epochs spent in earlier grades, so they saved 5-10 %.

What this does instead (Hyperband / BOHB's "budget" as a fidelity). Each config first
trains a *copy of itself at a smaller budget*: ``optim.epochs`` cut to a fraction, its
switch epochs and LR milestones scaled by the same fraction. The copy goes through every
grade and ends facing all classes; its final validation accuracy (all classes) is the
rung value. The best ``ceil(n / eta)`` configs of a rung are promoted: trained again,
from scratch, at the next budget; the last budget is the spec's own. The others are
pruned. On the same 16 digits configs, a copy at 20 % of the epochs ranked them with
Spearman 0.90 against their full runs, and keeping the best quarter kept the best config
at 2.2x fewer epochs (numbers: docs/benchmarks.md#early-stopping).

Rules this module keeps: a rung holds only results of runs that finished their copy in
the final grade (it refuses anything else, so trials in different grades are never
compared); it compares only configs run at the same budget; every config it does not
promote is pruned. It knows nothing of Ray: :mod:`edray.distributed.halving_search`
drives it from a Tune searcher.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

from edray.errors import EdrayError
from edray.search_space import BUDGET_KEY, fidelity_spec, search_section
from edray.spec import Spec

__all__ = ["BUDGET_KEY", "Rung", "SuccessiveHalving", "fidelity_spec", "halving_plan", "rung_epochs"]



def rung_epochs(spec: Spec) -> list[int]:
    """The budgets (epochs) of the rungs, the spec's own epochs last.

    Raises:
        EdrayError: a budget too short for one epoch per grade, or two budgets that round alike.
    """
    es = search_section(spec).early_stopping
    total = spec.optim.epochs
    # ED's grades, whatever the method: KD / CE specs still carry (unused) switch epochs that
    # must fit in the copy for the copy to be a valid spec.
    grades = spec.ed.grades
    out: list[int] = []
    for i, frac in enumerate(es.budgets):
        epochs = max(grades, round(frac * total))  # a copy has at least one epoch per grade
        if epochs >= total or (out and epochs <= out[-1]):
            raise EdrayError(
                f"search.early_stopping.budgets[{i}]", f"{frac} of {total} epochs gives {epochs} epochs (at least "
                f"one per grade), not between the budget before ({out[-1] if out else 0}) and {total}",
                "choose fewer or larger fractions, or more optim.epochs",
            )
        out.append(epochs)
    return [*out, total]


@dataclass(frozen=True)
class HalvingPlan:
    """How many configs run at each rung, and what that costs."""

    rungs: list[int]  # epochs per rung, the full budget last
    configs: list[int]  # configs run at each rung

    @property
    def trials(self) -> int:
        """Tune trials: one per config per rung it reaches."""
        return sum(self.configs)

    @property
    def epochs(self) -> int:
        return sum(r * n for r, n in zip(self.rungs, self.configs))


def halving_plan(rungs: list[int], num_configs: int, eta: float) -> HalvingPlan:
    configs = [num_configs]
    for _ in rungs[1:]:
        configs.append(max(1, math.ceil(configs[-1] / eta)))
    return HalvingPlan(list(rungs), configs)


@dataclass
class Rung:
    """The results at one budget. Only runs that ended in the final grade are kept."""

    epochs: int
    expected: int  # configs that will report at this rung
    values: dict[Hashable, float] = field(default_factory=dict)  # config -> final val accuracy of its copy
    failed: set[Hashable] = field(default_factory=set)

    @property
    def done(self) -> bool:
        return len(self.values) + len(self.failed) >= self.expected


class SuccessiveHalving:
    """Synchronous successive halving over configs (keys), one rung per budget.

    ``record`` each result; when every config of a rung has reported, ``decide`` returns
    (promoted, pruned). Synchronous because the cost is then known before the sweep
    starts (``halving_plan``), and a config is never pruned by a cut that later rises.

    Args:
        rungs: epochs per rung, ascending, the full budget last.
        num_configs: configs that start at the first rung.
        eta: keep ``ceil(n / eta)`` of the ``n`` configs of a rung.
        grades: the final grade; a rung refuses results from any other grade.
    """

    def __init__(self, rungs: list[int], num_configs: int, eta: float, *, grades: int):
        if eta <= 1:
            raise ValueError(f"eta must be > 1, got {eta}")
        if any(b <= a for a, b in zip(rungs, rungs[1:])):
            raise ValueError(f"rungs must strictly increase, got {rungs}")
        self.plan = halving_plan(rungs, num_configs, eta)
        self.eta = eta
        self.grades = grades
        self.rungs = [Rung(e, n) for e, n in zip(self.plan.rungs, self.plan.configs)]
        self.decided: set[int] = set()

    def rung_of(self, epochs: int) -> int:
        for i, rung in enumerate(self.rungs):
            if rung.epochs == epochs:
                return i
        raise KeyError(f"no rung at {epochs} epochs (rungs: {[r.epochs for r in self.rungs]})")

    def record(self, key: Hashable, epochs: int, value: float | None, *, grade: int, epoch: int) -> None:
        """The result of ``key``'s copy at ``epochs`` epochs: its last epoch, grade and value.

        Raises:
            ValueError: the run did not reach the end of its copy in the final grade; ranking
                it against runs that did would compare trials in different grades.
        """
        rung = self.rungs[self.rung_of(epochs)]
        if value is None:
            rung.failed.add(key)
            return
        if grade != self.grades or epoch != epochs:
            raise ValueError(f"rung at {epochs} epochs takes only finished copies in grade {self.grades}; "
                             f"{key!r} reported epoch {epoch} in grade {grade}")
        rung.values[key] = float(value)

    def fail(self, key: Hashable, epochs: int) -> None:
        self.rungs[self.rung_of(epochs)].failed.add(key)

    def decide(self, epochs: int) -> tuple[list[Hashable], list[Hashable]] | None:
        """(promoted, pruned) once every config of the rung at ``epochs`` reported, else None.

        Ties keep the config that reported first. The last rung promotes nobody and prunes
        nobody: its runs are the spec's own, complete. Each rung decides once.
        """
        index = self.rung_of(epochs)
        rung = self.rungs[index]
        if index in self.decided or not rung.done or index == len(self.rungs) - 1:
            return None
        self.decided.add(index)
        ranked = sorted(rung.values, key=lambda k: -rung.values[k])  # stable: first reporter wins a tie
        keep = min(len(ranked), self.rungs[index + 1].expected)
        # Fewer survivors than planned (failures): the next rung expects only those.
        self.rungs[index + 1].expected = keep
        return ranked[:keep], ranked[keep:]
