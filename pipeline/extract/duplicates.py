"""Duplicate items: the same file listed twice, or the same audio (file sha256) under two ids.

Within one split a duplicate only weighs that clip twice: a warning. Across train/valid/test it
is a leak (the model is evaluated on what it trained on): refused, unless the user says so with
``--allow-duplicates``, which the store records (root attribute ``dataset.duplicates``).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from eastkd.errors import EastkdError
from eastkd.pipeline.extract.indexing import MISSING, UNHASHED
from eastkd.store import ItemsTable

log = logging.getLogger("eastkd")
_SHOWN = 3  # ids named per group in a message
_RECORDED = 100  # groups recorded in the store


@dataclass
class Duplicates:
    """Groups of rows (each at least two) that share a path or content."""

    same_path: list[list[int]]
    same_content: list[list[int]]  # not already a same-path group

    def across(self, items: ItemsTable) -> list[tuple[str, list[int]]]:
        return [(what, g) for what, g in self._all() if len({items.splits[i] for i in g}) > 1]

    def within(self, items: ItemsTable) -> list[tuple[str, list[int]]]:
        return [(what, g) for what, g in self._all() if len({items.splits[i] for i in g}) == 1]

    def _all(self) -> list[tuple[str, list[int]]]:
        return [("path", g) for g in self.same_path] + [("content", g) for g in self.same_content]


def find_duplicates(items: ItemsTable) -> Duplicates:
    """Rows listing the same file (by normalised path), and rows whose files have the same
    sha256 (unreadable or unhashed files excluded)."""
    by_path: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(items.paths):
        by_path[os.path.normcase(os.path.normpath(p))].append(i)
    same_path = [g for g in by_path.values() if len(g) > 1]
    path_group = {i: k for k, g in enumerate(same_path) for i in g}
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(items.sha256):
        if h not in (MISSING, UNHASHED):
            by_sha[h].append(i)
    same_content = []
    for g in by_sha.values():  # one row per file: same-path rows are a group of their own
        files, seen = [], set()
        for i in g:
            key = path_group.get(i, -1 - i)  # rows of one path share a key
            if key not in seen:
                seen.add(key)
                files.append(i)
        if len(files) > 1:
            same_content.append(files)
    return Duplicates(same_path, same_content)


def _describe(items: ItemsTable, what: str, group: list[int]) -> str:
    ids = ", ".join(f"{items.ids[i]!r} ({items.splits[i]})" for i in group[:_SHOWN])
    more = f" and {len(group) - _SHOWN} more" if len(group) > _SHOWN else ""
    if what == "path":
        return f"ids {ids}{more} list the same file {items.paths[group[0]]}"
    return f"ids {ids}{more} have the same audio (sha256 {items.sha256[group[0]][:12]})"


def check_duplicates(items: ItemsTable, allow: bool, allowed_before: bool = False
                     ) -> dict[str, Any] | None:
    """Warn about duplicates within a split; refuse duplicates across splits (one line naming
    the ids) unless ``allow`` (or the store recorded ``allowed_before``). Returns what the
    store records about them (None when there are none)."""
    dups = find_duplicates(items)
    across, within = dups.across(items), dups.within(items)
    if across and not (allow or allowed_before):
        others = f" (and {len(across) - 1} more such groups)" if len(across) > 1 else ""
        raise EastkdError(
            f"{_describe(items, *across[0])}: the same audio in different splits leaks "
            f"between them{others}; remove the duplicates from the dataset, or rerun with "
            "--allow-duplicates (recorded in the store)")
    for what, group in within:
        log.warning("duplicate items in one split: %s", _describe(items, what, group))
    for what, group in across:
        log.warning("duplicate items across splits (allowed): %s", _describe(items, what, group))
    if not across and not within:
        return None
    return {"allowed_across_splits": bool(across) and (allow or allowed_before),
            "within_split": len(within), "across_splits": len(across),
            "groups": [[items.ids[i] for i in g] for _, g in (across + within)[:_RECORDED]]}
