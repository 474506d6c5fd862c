"""Generated tables live between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers in README.md or docs/*.md.

`replace_section(NAME, body)` writes into whichever page holds the NAME markers (bench-suite: docs/benchmarks.md,
arm64-emu and device-profiles: docs/arm.md, reliability: docs/reliability.md). Relative links in `body` are written
from the repository root (`benchmarks/results/x.png`) and rewritten to be relative to that page.

`python benchmarks/readme_sections.py` lists the markers and the pages that hold them; it changes nothing.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
_MARKER = re.compile(r"<!-- ([\w-]+):start -->\n")
_LINK = re.compile(r"(\]\()([^)#\s]+)")


def pages() -> list[Path]:
    """The pages that may hold generated sections: README.md, then docs/*.md."""
    return [README, *sorted(DOCS.glob("*.md"))]


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {re.escape(name)}:start -->\n).*?(<!-- {re.escape(name)}:end -->)", re.S)


def _relative_links(body: str, page: Path) -> str:
    """Repository-root-relative link targets in `body`, made relative to `page`'s folder."""
    if page.parent == ROOT:
        return body

    def fix(m: re.Match[str]) -> str:
        target = m[2]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):  # URL or absolute path
            return m[0]
        return m[1] + Path(os.path.relpath(ROOT / target, page.parent)).as_posix()

    return _LINK.sub(fix, body)


def section_pages(name: str) -> list[Path]:
    """The pages holding the NAME markers (normally exactly one)."""
    pattern = _pattern(name)
    return [p for p in pages() if p.is_file() and pattern.search(p.read_text())]


def replace_section(name: str, body: str) -> bool:
    """Put `body` between the NAME markers; False (every page untouched) when no page has the markers."""
    pattern = _pattern(name)
    found = section_pages(name)
    for page in found:
        text, new = page.read_text(), _relative_links(body, page)
        page.write_text(pattern.sub(lambda m, new=new: m[1] + new + m[2], text))
    return bool(found)


def main() -> None:
    argparse.ArgumentParser(description="List the generated sections (markers) and the pages that hold them; "
                                        "changes nothing.").parse_args()
    for page in pages():
        for name in _MARKER.findall(page.read_text()):
            ok = "ok" if _pattern(name).search(page.read_text()) else "no end marker"
            print(f"{name}: {page.relative_to(ROOT)} ({ok})")


if __name__ == "__main__":
    main()
