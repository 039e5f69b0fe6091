"""``extract --like RUN_DIR|STORE``: the student-input settings (segment and log-mel
parameters) of a trained run or an extracted store, so that a second dataset's store matches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from eastkd.errors import EastkdError
from eastkd.pipeline.core.features import LogMelParams
from eastkd.pipeline.runs.rundir import CONFIG, read_config, run_file


@dataclass(frozen=True)
class StudentInputs:
    """What decides the student's input: clip length, crop policy and log-mel parameters."""

    segment: float
    crop: str
    logmel: LogMelParams

    def flags(self) -> str:
        """The equivalent command-line flags (for messages)."""
        return (f"--segment {self.segment:g} --crop {self.crop} --n-mels {self.logmel.n_mels} "
                f"--student-sr {self.logmel.sample_rate}")


def _from_dicts(logmel: dict[str, Any], segment: dict[str, Any], where: str) -> StudentInputs:
    known = {f.name for f in fields(LogMelParams)}
    if not logmel or not segment or "seconds" not in segment:
        raise EastkdError(f"{where}: records no log-mel settings; give a RUN_DIR of "
                          "`eastkd distill` or a store written by `eastkd extract`")
    params = LogMelParams(**{k: v for k, v in logmel.items() if k in known})
    return StudentInputs(float(segment["seconds"]), str(segment.get("crop", "start")), params)


def read_student_inputs_from_config(config: dict[str, Any], where: str) -> StudentInputs:
    """The student-input settings of a run's ``config.json`` contents."""
    return _from_dicts(config.get("logmel", {}), config.get("segment", {}), where)


def read_student_inputs(path: str) -> StudentInputs:
    """The student-input settings recorded in a RUN_DIR (``config.json``) or a store."""
    if os.path.isfile(run_file(path, CONFIG)):
        return read_student_inputs_from_config(read_config(path), path)
    if not os.path.exists(path) and "://" not in path:
        raise EastkdError(f"--like {path}: no such run directory or store; give a RUN_DIR "
                          f"(with {CONFIG}) or a store")
    from eastkd.store import FEATURES, open_store

    with open_store(path, "r") as store:
        if not store.has_section("features", FEATURES):
            raise EastkdError(f"--like {path}: the store has no log-mel features; extract it "
                              "first or give a RUN_DIR")
        attrs = store.features(FEATURES).attrs
    return _from_dicts(attrs.get("params", {}), attrs.get("segment", {}), path)
