"""Generated tables in README.md live between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def replace_section(name: str, body: str) -> bool:
    """Put `body` between the NAME markers; False (README untouched) when the markers are missing."""
    pattern = re.compile(rf"(<!-- {re.escape(name)}:start -->\n).*?(<!-- {re.escape(name)}:end -->)", re.S)
    text = README.read_text()
    if not pattern.search(text):
        return False
    README.write_text(pattern.sub(lambda m: m[1] + body + m[2], text))
    return True
