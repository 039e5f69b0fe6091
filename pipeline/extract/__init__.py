"""The extract stage: run the teacher once over a dataset and cache everything later stages need.

Work is split into *units* of whole chunks (``plan``); ``--shard I/N`` gives unit ``u`` to the
process with ``u % N == I`` and ``ExtractOptions.units`` picks units by index, so writers never
share a chunk. Workers decode (``inputs``), the teacher's device resamples, computes the log-mel
and runs the teacher, and a writer thread writes each chunk once and each unit's status last
(``writer``), so a run killed at any moment (even SIGKILL) is continued by the same command with
nothing finished recomputed, and the final arrays equal those of an uninterrupted run bit for
bit.
"""

from eastkd.pipeline.extract.options import (
    FEATURES,
    ON_ERROR,
    ExtractOptions,
    ExtractSummary,
    default_workers,
    parse_shard,
)
from eastkd.pipeline.extract.run import extract, extract_into, open_or_create

__all__ = ["FEATURES", "ON_ERROR", "ExtractOptions", "ExtractSummary", "default_workers",
           "extract", "extract_into", "open_or_create", "parse_shard"]
