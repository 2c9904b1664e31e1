"""The run table: every sequence under every candidate of a run, and the oracles over it.

Columns are the run's candidates in order, then the full model (column `choose.FULL`, the last).  Built once from a run's records, it answers the rule, the exact rule and the knapsack, and gives the
table restricted to some columns (e.g. the training-free candidates).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skiporacle.oracle.candidate_list import space_of
from skiporacle.oracle.choose import FULL, KnapsackCurve, cheapest_identical, cheapest_matching, knapsack, or_full
from skiporacle.oracle.schema import FULL_SPEC, SequenceRecord



@dataclass(frozen=True)
class RunTable:
    specs: list[str]
    costs: list[int]  # layers per generated token
    scores: np.ndarray  # [N, K], 0-100
    identical: np.ndarray  # [N, K] bool: the output equals the full model's

    @classmethod
    def from_records(cls, records: list[SequenceRecord]) -> "RunTable":
        """The table of a run's records (every record lists the same candidates)."""
        return cls(
            specs=[c.spec for c in records[0].candidates] + [FULL_SPEC],
            costs=[c.cost for c in records[0].columns],
            scores=np.array([[c.score for c in r.columns] for r in records]),
            identical=np.array([[c.identical for c in r.candidates] + [True] for r in records]),
        )

    @property
    def full_column(self) -> int:
        return len(self.costs) + FULL

    @property
    def full_scores(self) -> np.ndarray:
        """[N]: the full model's score of each sequence."""
        return self.scores[:, self.full_column]

    @property
    def num_layers(self) -> int:
        return self.costs[self.full_column]

    @property
    def spaces(self) -> list[str]:
        """The space (or series) of each column (see `candidates.space_of`)."""
        return [space_of(s) for s in self.specs]

    def rule(self, tolerance: float) -> np.ndarray:
        """Per sequence, the column of the cheapest candidate with score >= full - tolerance (-1: none)."""
        return cheapest_matching(self.scores, self.costs, self.full_scores, tolerance)

    def exact_rule(self) -> np.ndarray:
        """Per sequence, the column of the cheapest candidate whose output is the full model's (-1: none)."""
        return cheapest_identical(self.identical, self.scores, self.costs)

    def or_full(self, choice: np.ndarray) -> np.ndarray:
        """The chosen columns, with the full model where nothing was chosen (-1)."""
        return or_full(choice, self.costs)

    def chosen_layers(self, choice: np.ndarray) -> np.ndarray:
        """[N] float: the cost of each sequence's choice (the full model's where none)."""
        return np.array([self.costs[k] for k in self.or_full(choice)], dtype=float)

    def knapsack(self) -> KnapsackCurve:
        return knapsack(self.scores, self.costs)

    def subset(self, columns: list[int]) -> "RunTable":
        """The table of these columns only (the full model's must be the last of them)."""
        assert columns[-1] == self.full_column, "the full model must stay the last column"
        return RunTable([self.specs[k] for k in columns], [self.costs[k] for k in columns],
                        self.scores[:, columns], self.identical[:, columns])

    def training_free_columns(self) -> list[int]:
        """Columns of the candidates that use the model's own weights (all but the `healed:` ones)."""
        return [k for k, s in enumerate(self.spaces) if s != "healed"]
