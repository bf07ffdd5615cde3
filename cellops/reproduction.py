"""Whether a re-run reproduced a registered version: each registered metric against the re-run's, within an
absolute tolerance per metric, and the verdict (``cellops reproduce``; the git, DVC and ZenML side is in
``tracking.reproduce``). Numbers in, a :class:`Reproduction` out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

#: The verdicts: every registered metric within its tolerance, or not.
REPRODUCED, DIFFERS = "reproduced", "differs"


@dataclass(frozen=True)
class Tolerances:
    """Absolute tolerances: ``|reproduced - registered| <= tolerance`` passes.

    Attributes
    ----------
    default : float
        For a metric not named in ``metrics``.
    metrics : Mapping of str to float
        Per metric.
    """

    default: float
    metrics: Mapping[str, float]

    def __post_init__(self) -> None:
        for name, value in {"default": self.default, **self.metrics}.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"tolerance {name}: must be a finite number >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, config: Mapping[str, object], overrides: Mapping[str, float] | None = None) -> Tolerances:
        """From ``configs/reproduce.yaml`` (``{default: ..., metrics: {name: ...}}``), ``overrides`` on top (a
        ``default`` key among them replaces the default).

        Examples
        --------
        >>> Tolerances.from_dict({"default": 0.001, "metrics": {"dice": 0.01}}, {"dice": 0.0}).of("dice")
        0.0
        """
        overrides = dict(overrides or {})
        default = float(overrides.pop("default", config.get("default", 0.0)))  # type: ignore[arg-type]
        metrics = {str(k): float(v) for k, v in dict(config.get("metrics") or {}).items()}  # type: ignore[call-overload]
        return cls(default, {**metrics, **{k: float(v) for k, v in overrides.items()}})

    def of(self, metric: str) -> float:
        """The tolerance of ``metric``."""
        return float(self.metrics.get(metric, self.default))


@dataclass(frozen=True)
class MetricComparison:
    """One metric: registered, reproduced (None when the re-run did not measure it), difference and verdict."""

    metric: str
    registered: float
    reproduced: float | None
    difference: float | None
    tolerance: float
    within: bool


@dataclass(frozen=True)
class Reproduction:
    """The comparison of a re-run with its registered version.

    Attributes
    ----------
    model : str
        ``NAME:VERSION`` of the registered version.
    comparisons : tuple of MetricComparison
        One per registered metric, sorted by name.
    verdict : str
        :data:`REPRODUCED` when every metric is within its tolerance, else :data:`DIFFERS`.
    """

    model: str
    comparisons: tuple[MetricComparison, ...]
    verdict: str

    def as_dict(self) -> dict:
        """JSON-ready (``--json``)."""
        return {"model": self.model, "verdict": self.verdict,
                "metrics": [asdict(c) for c in self.comparisons]}

    def table(self) -> str:
        """The comparison as a Markdown table, then the verdict.

        Examples
        --------
        >>> print(compare_metrics("m:1", {"iou": 0.5}, {"iou": 0.5}, Tolerances(0.0, {})).table())
        | metric | registered | reproduced | difference | tolerance | within |
        |---|---|---|---|---|---|
        | iou | 0.5 | 0.5 | 0 | 0 | yes |
        <BLANKLINE>
        m:1: reproduced (1 of 1 metrics within tolerance)
        """
        lines = ["| metric | registered | reproduced | difference | tolerance | within |", "|---|---|---|---|---|---|"]
        for c in self.comparisons:
            reproduced = "not measured" if c.reproduced is None else f"{c.reproduced:.6g}"
            difference = "" if c.difference is None else f"{c.difference:.3g}"
            lines.append(f"| {c.metric} | {c.registered:.6g} | {reproduced} | {difference} | {c.tolerance:g} | "
                         f"{'yes' if c.within else 'NO'} |")
        within = sum(c.within for c in self.comparisons)
        return "\n".join(lines) + (f"\n\n{self.model}: {self.verdict} ({within} of {len(self.comparisons)} metrics "
                                   "within tolerance)")


def compare_metrics(model: str, registered: Mapping[str, float], reproduced: Mapping[str, float],
                    tolerances: Tolerances) -> Reproduction:
    """Compare every registered metric with the re-run's.

    Parameters
    ----------
    model : str
        ``NAME:VERSION``.
    registered : mapping of str to float
        The version's metrics (its ``metric.*`` tags).
    reproduced : mapping of str to float
        The re-run's, the same names.
    tolerances : Tolerances
        The absolute tolerance of each.

    Returns
    -------
    Reproduction
        The comparisons and the verdict; a registered metric the re-run lacks, or a NaN on one side only, is not
        within tolerance (NaN on both sides is).

    Raises
    ------
    ValueError
        When ``registered`` is empty: there is nothing to compare.

    Examples
    --------
    >>> result = compare_metrics("m:1", {"iou": 0.5, "dice": 0.6}, {"iou": 0.52, "dice": 0.6},
    ...                          Tolerances(0.001, {}))
    >>> result.verdict, [(c.metric, c.within) for c in result.comparisons]
    ('differs', [('dice', True), ('iou', False)])
    """
    if not registered:
        raise ValueError(f"{model} has no registered metrics to compare")
    comparisons = []
    for metric in sorted(registered):
        old = float(registered[metric])
        tolerance = tolerances.of(metric)
        if metric not in reproduced:
            comparisons.append(MetricComparison(metric, old, None, None, tolerance, False))
            continue
        new = float(reproduced[metric])
        if math.isnan(old) or math.isnan(new):
            within, difference = math.isnan(old) and math.isnan(new), None
        else:
            difference = new - old
            within = abs(difference) <= tolerance
        comparisons.append(MetricComparison(metric, old, new, difference, tolerance, within))
    verdict = REPRODUCED if all(c.within for c in comparisons) else DIFFERS
    return Reproduction(model, tuple(comparisons), verdict)
