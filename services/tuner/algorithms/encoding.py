"""The numeric model space shared by the model-based tuners (TPE, Anneal, Evolution's mutation).

Each flat parameter becomes one column of a float vector; inactive parameters (inside a nested
choice that was not taken) are NaN:

* ``bounded``: uniform-type parameters, scaled to [0, 1] in internal (log) space;
* ``normal``: normal-type parameters, standardised to (x - mu) / sigma;
* ``ordinal``: ``randint``, as the centre of its bin in [0, 1], so neighbouring integers are close;
* ``categorical``: ``choice``, the option index.

Quantised and integer columns are *snapped* to the value the trial will really get, so the model
scores what is evaluated, not a point that rounding will move.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.search_space import ParamPath, ParamSpec

from .base import Internal

__all__ = ["Column", "Encoding"]


@dataclass(frozen=True)
class Column:
    """One model-space column; see the module docstring for the kinds."""

    spec: ParamSpec
    kind: str  # bounded | normal | ordinal | categorical
    size: int  # options of a categorical, bins of an ordinal column; 0 otherwise
    step: float  # the spacing of values in model units where it is (roughly) uniform; 0 if continuous
    parent: tuple[int, int] | None  # (column of the nested choice, option index) gating this one


def _column(spec: ParamSpec, index_of: dict[ParamPath, int]) -> Column:
    parent = spec.parent
    gate = (index_of[parent[0]], parent[1]) if parent else None
    if spec.type == "choice":
        return Column(spec, "categorical", spec.size, 0.0, gate)
    if spec.type == "randint":
        return Column(spec, "ordinal", spec.size, 1.0 / spec.size, gate)
    if spec.normal:
        step = spec.q / spec.sigma if spec.q and not spec.log else 0.0
        return Column(spec, "normal", 0, step, gate)
    step = spec.q / (spec.high - spec.low) if spec.q and not spec.log else 0.0
    return Column(spec, "bounded", 0, step, gate)


class Encoding:
    """Converts internal values to model-space vectors and back, vectorised over many points."""

    def __init__(self, specs: Sequence[ParamSpec]) -> None:
        index_of = {spec.path: i for i, spec in enumerate(specs)}
        self.columns = [_column(spec, index_of) for spec in specs]
        self.dim = len(self.columns)
        kinds = np.array([c.kind for c in self.columns])
        self.bounded = np.flatnonzero((kinds == "bounded") | (kinds == "ordinal"))
        self.normal = np.flatnonzero(kinds == "normal")
        self.categorical = np.flatnonzero(kinds == "categorical")
        self.nested = any(c.parent is not None for c in self.columns)

    def encode(self, internal: Internal) -> np.ndarray:
        """One point's model-space vector (NaN where a parameter is inactive)."""
        out = np.full(self.dim, np.nan)
        for i, column in enumerate(self.columns):
            x = internal.get(column.spec.path)
            if x is not None:
                out[i] = self._encode_one(column, float(x))
        return out

    @staticmethod
    def _encode_one(column: Column, x: float) -> float:
        spec = column.spec
        if column.kind == "categorical":
            return x
        if column.kind == "ordinal":
            return (x + 0.5) / column.size
        if column.kind == "normal":
            return (x - spec.mu) / spec.sigma
        return (x - spec.low) / (spec.high - spec.low)

    def decode(self, vector: np.ndarray) -> Internal:
        """Internal values of one model-space vector; NaN columns are left out."""
        internal: Internal = {}
        for column, u in zip(self.columns, vector, strict=True):
            if np.isnan(u):
                continue
            spec = column.spec
            if column.kind == "categorical":
                internal[spec.path] = float(int(u))
            elif column.kind == "ordinal":
                internal[spec.path] = float(min(max(int(u * column.size), 0), column.size - 1))
            elif column.kind == "normal":
                internal[spec.path] = spec.mu + float(u) * spec.sigma
            else:
                internal[spec.path] = spec.low + min(max(float(u), 0.0), 1.0) * (spec.high - spec.low)
        return internal

    def mask_inactive(self, points: np.ndarray) -> np.ndarray:
        """Set columns of untaken nested-choice options to NaN (parents come before children)."""
        if not self.nested:
            return points
        for i, column in enumerate(self.columns):
            if column.parent is not None:
                parent, option = column.parent
                points[points[:, parent] != option, i] = np.nan  # NaN parent compares unequal too
        return points

    def snap(self, points: np.ndarray) -> np.ndarray:
        """Move quantised and integer columns onto the values trials will actually receive."""
        for i in self.bounded:
            column = self.columns[i]
            if column.kind == "ordinal":
                bins = np.clip(np.floor(points[:, i] * column.size), 0, column.size - 1)
                points[:, i] = (bins + 0.5) / column.size
            elif column.spec.q is not None:
                points[:, i] = self._snap_quantised(column.spec, points[:, i])
        for i in self.normal:
            spec = self.columns[i].spec
            if spec.q is not None:
                value = spec.mu + points[:, i] * spec.sigma
                value = np.exp(value) if spec.log else value
                value = np.round(value / spec.q) * spec.q
                if spec.log:  # a value rounded to 0 is represented as in shared.search_space.from_value
                    value = np.log(np.where(value > 0, value, spec.q / 4))
                points[:, i] = (value - spec.mu) / spec.sigma
        return points

    @staticmethod
    def _snap_quantised(spec: ParamSpec, u: np.ndarray) -> np.ndarray:
        low, high = spec.clip or (0.0, 1.0)
        value = spec.low + np.clip(u, 0.0, 1.0) * (spec.high - spec.low)
        value = np.exp(value) if spec.log else value
        value = np.clip(np.round(value / spec.q) * spec.q, low, high)  # NNI: round half to even, then clip
        value = np.log(value) if spec.log else value
        return (value - spec.low) / (spec.high - spec.low)
