"""Resource ids that sort by creation time (UUID version 7 layout).

Random (v4) ids scatter every new resource across every b-tree keyed by id, so a
commit dirties one random page per table; time-ordered ids append at the right
edge, where consecutive messages share pages.  Measured in bench/ingest.py.
"""

from __future__ import annotations

import os
import time


def new_id() -> str:
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80 | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64 \
        | (0b10 << 62) | (rand & ((1 << 62) - 1))
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
