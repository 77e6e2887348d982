"""Probe families as the runs declare them, and one value series per family.

The engine's probes and each method's ``probes`` hook declare, in metrics.json, which history
columns form a family and how to draw it:
``{family_id: {title, log_y, headline, columns, threshold}}``. The analysis draws and measures
probes only through these declarations, so a new probe or method shows up in the report
without a line of analysis code, and no column or method name is written here. Runs written
before the declarations existed have none: their probe panels are simply absent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd


def declared_families(run_dirs: Iterable[str | Path]) -> dict[str, dict]:
    """The union of the runs' ``probe_families`` (first declaration of a family wins, its
    columns are the union over runs), in the order first seen."""
    families: dict[str, dict] = {}
    for run_dir in run_dirs:
        path = Path(run_dir) / "metrics.json"
        if not path.exists():
            continue
        declared = json.loads(path.read_text(encoding="utf-8")).get("probe_families") or {}
        for fid, spec in declared.items():
            fam = families.setdefault(str(fid), {
                "title": spec.get("title") or str(fid), "log_y": bool(spec.get("log_y")),
                "headline": spec.get("headline"), "columns": [],
                "threshold": None if spec.get("threshold") is None else float(spec["threshold"])})
            fam["columns"] += [c for c in spec.get("columns") or [] if c not in fam["columns"]]
    return families


def family_values(history: pd.DataFrame, family: dict) -> pd.Series | None:
    """The family's headline column, or the mean of its columns present; None if absent."""
    headline = family.get("headline")
    if headline:
        return history[headline] if headline in history else None
    cols = [c for c in family.get("columns") or [] if c in history]
    return history[cols].mean(axis=1) if cols else None


def family_of(families: dict[str, dict], probe: str) -> str | None:
    """The id of the family a claim's ``probe`` means: a family id, headline or column."""
    for fid, fam in families.items():
        if probe == fid or probe == fam.get("headline") or probe in fam.get("columns", []):
            return fid
    return None


def crossing_counts(history: pd.DataFrame, family: dict, spike_steps: Iterable[float],
                    steps: float) -> dict[str, float]:
    """How loss spikes line up with the family crossing its threshold.

    A step is "near a crossing" when a probe reading above the threshold lies within one probe
    interval of it. Returns spikes (count), spikes_near (spikes near a crossing), near_steps
    (steps near a crossing) and steps, so that claims can compare the share of spikes near a
    crossing with the share of all steps near one.
    """
    values = family_values(history, family)
    spikes = [float(s) for s in spike_steps]
    out = {"spikes": float(len(spikes)), "spikes_near": math.nan, "near_steps": math.nan,
           "steps": float(steps)}
    if values is None or family.get("threshold") is None or "step" not in history:
        return out
    probed = history.loc[values.notna(), "step"].astype(float)
    if probed.empty or not math.isfinite(float(steps)):
        return out
    interval = float(probed.diff().median()) if len(probed) > 1 else float(steps)
    above = probed[values[values.notna()].to_numpy() > family["threshold"]].to_numpy()

    n = int(steps)
    near = np.zeros(n + 1, dtype=bool)  # index = step; step 0 is not a training step
    for a in above:
        near[max(1, math.ceil(a - interval)):max(1, math.floor(a + interval) + 1)] = True
    inside = [s for s in spikes if 1 <= s <= n]
    out["spikes_near"] = float(sum(near[int(s)] for s in inside))
    out["near_steps"] = float(near[1:].sum())
    return out
