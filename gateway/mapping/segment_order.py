"""The standard segment order of a message, compiled once, checked in one pass.

``segment_order`` in ``mappings/messages/*.yaml`` lists *ranks*: groups of segments that
may interleave and repeat among themselves (``[AIS, AIG, AIL, AIP]``).  A ranked segment
whose rank is lower than the highest rank already seen is out of order.  A ``repeat:``
block stands for a repeating segment group of the abstract message syntax
(``{PID, [PD1], [PV1] ...}``, ``{RGS, {AIS} ...}``): its first rank may come again after
any rank of the same block, which starts a new repetition of the group.  Segments that
are not listed (NTE, ROL, Z-segments, anything unknown) are unranked and may appear
anywhere.

No hl7apy and no grammar: one dict lookup per segment, on the ingest hot path.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.hl7v2.errors import Issue
from gateway.hl7v2.parser import Segment
from gateway.mapping.rules import MappingConfigError

__all__ = ["SegmentOrder", "compile_segment_order"]

_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")


class SegmentOrder:
    """One message structure's order: segment name -> (rank, restart ceiling)."""

    __slots__ = ("ranks",)

    def __init__(self, ranks: dict[str, tuple[int, int]]) -> None:
        # ceiling: -1, or for the first rank of a `repeat:` block the block's highest rank
        # (the segment may follow anything up to that rank: a new repetition of the group).
        self.ranks = ranks

    def check(self, segments: list[Segment], severity: str, issues: list[Issue]) -> None:
        """Append one issue (code 100) per ranked segment that comes too late."""
        get = self.ranks.get
        top = -1  # the highest rank seen since the message (or the current group) began
        run_start = 0
        for i, seg in enumerate(segments):
            entry = get(seg.name)
            if entry is None:
                continue
            rank, ceiling = entry
            if rank >= top:
                top = rank
            elif top <= ceiling:  # a new repetition of a repeating group
                top = rank
                run_start = i
            else:
                issues.append(self._issue(segments, i, run_start, rank, ceiling, severity))

    def _issue(self, segments: list[Segment], i: int, run_start: int, rank: int, ceiling: int,
               severity: str) -> Issue:
        """The error path: name the first earlier segment this one should have preceded."""
        seg = segments[i]
        limit = max(rank, ceiling)
        ranks = self.ranks
        before = next(s for s in segments[run_start:i] if ranks.get(s.name, (-1, -1))[0] > limit)
        occurrence = sum(1 for s in segments[:i + 1] if s.name == seg.name)
        return Issue(severity, 100,  # type: ignore[arg-type]
                     f"{seg.name} at segment {seg.index} is out of order: it must come before "
                     f"{before.name} (segment {before.index})", seg.name, occurrence)


def _rank(item: Any, where: str) -> list[str]:
    names = [item] if isinstance(item, str) else item
    if not isinstance(names, list) or not names:
        raise MappingConfigError(f"{where}: each rank must be a segment name or a non-empty list of names, "
                                 f"not {item!r}")
    out = []
    for name in names:
        if not isinstance(name, str) or not _SEGMENT_NAME.match(name.upper()):
            raise MappingConfigError(f"{where}: {name!r} is not a segment name")
        out.append(name.upper())
    return out


def compile_segment_order(spec: Any, where: str) -> SegmentOrder:
    """``[[MSH], [SFT], [SCH], {repeat: [[RGS], [AIS, AIG, AIL, AIP]]}]`` -> a SegmentOrder."""
    if not isinstance(spec, list) or not spec:
        raise MappingConfigError(f"{where}: segment_order must be a list of ranks")
    ranks: dict[str, tuple[int, int]] = {}

    def add(names: list[str], rank: int, ceiling: int) -> None:
        for name in names:
            if name in ranks:
                raise MappingConfigError(f"{where}: {name} appears twice in segment_order")
            ranks[name] = (rank, ceiling)

    rank = 0
    for item in spec:
        if isinstance(item, dict):
            if set(item) != {"repeat"} or not isinstance(item["repeat"], list) or not item["repeat"]:
                raise MappingConfigError(f"{where}: a repeating group is written {{repeat: [[FIRST], [NEXT] ...]}}")
            block = [_rank(r, where) for r in item["repeat"]]
            last = rank + len(block) - 1
            for offset, names in enumerate(block):
                add(names, rank + offset, last if offset == 0 else -1)
            rank = last + 1
        else:
            add(_rank(item, where), rank, -1)
            rank += 1
    return SegmentOrder(ranks)
