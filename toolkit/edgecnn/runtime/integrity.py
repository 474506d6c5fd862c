"""Is this model file the one edgecnn wrote? A content hash inside the file, checked before any runtime sees it.

Measured: of 40 randomly corrupted copies of a real int8 MobileNetV2, the TFLite runtime loaded and ran 10
without any error and onnxruntime 7 — silent wrong answers. So every edgecnn artefact carries, in its model card,

    "content_sha256": "<sha256 of the whole file with these 64 hex digits set to '0'>"

Sealing writes the card with 64 zeros, hashes the file, and overwrites the zeros in place with the digest: same
length, so the flatbuffer/protobuf around it is unchanged. Checking finds the entry in the raw bytes, zeroes it,
hashes, compares. A file that shows any sign of an edgecnn card but no intact entry is refused too (a flip in the
key or a digit is corruption, not a foreign file); only files with no card at all — made by other tools — load
"unverified". A `sha256sum`-style sidecar `FILE.sha256` (`edgecnn export --sha256`) is checked when present.

Standard library only: the runtime imports this on a Pi without torch.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from edgecnn.errors import EdgeCNNError

HASH_KEY = "content_sha256"
PLACEHOLDER = "0" * 64
# The entry exactly as json.dumps writes it; inside a JSON string a quote is escaped, so label text cannot fake it.
_ENTRY = re.compile(rb'"' + HASH_KEY.encode() + rb'": "([0-9a-f]{64})"')
# Keys every edgecnn card has: any of them in the bytes means the file was sealed and must verify.
CARD_MARKERS = (b'"' + HASH_KEY.encode() + b'"', b'"edgecnn_version"', b'"card_version"')
FIX = "re-export or re-copy it, or pass --no-verify to use it anyway"
# Cards before content hashes (edgecnn 0.1.0's first exports): a file from then is old, not damaged. A single bit
# flip cannot turn a sealed card's version 2 into 1 (0x32 → 0x31 changes two bits).
LEGACY_CARD = b'"card_version": 1,'
LEGACY = "unverified: exported before edgecnn sealed its files (card version 1); re-export it to seal it"


@dataclass(frozen=True)
class Integrity:
    verified: bool
    embedded: bool  # the file's own content hash matched (not only a sidecar)
    detail: str  # what was checked, or why nothing could be


def seal(data: bytes) -> bytes:
    """Replace the card's placeholder digest with the hash of the file (placeholder included)."""
    placeholder = f'"{HASH_KEY}": "{PLACEHOLDER}"'.encode()
    if data.count(placeholder) != 1:
        raise EdgeCNNError(f"cannot seal the model file: expected one {HASH_KEY} placeholder, found "
                           f"{data.count(placeholder)}")
    digest = hashlib.sha256(data).hexdigest().encode()
    start = data.index(placeholder) + len(placeholder) - 65
    return data[:start] + digest + data[start + 64 :]


def content_digest(data: bytes) -> tuple[str, str] | None:
    """(stored digest, digest of the bytes with it zeroed), or None when the file has no intact entry."""
    entries = list(_ENTRY.finditer(data))
    if len(entries) != 1:
        return None
    start, end = entries[0].span(1)
    zeroed = data[:start] + PLACEHOLDER.encode() + data[end:]
    return entries[0].group(1).decode(), hashlib.sha256(zeroed).hexdigest()


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sidecar_line(path: Path, data: bytes) -> str:
    """`<hex>  <name>` as sha256sum writes it, so `sha256sum -c FILE.sha256` checks it too."""
    return f"{hashlib.sha256(data).hexdigest()}  {path.name}\n"


def _check_sidecar(path: Path, data: bytes) -> str | None:
    """The sidecar's verdict: None without one; raises when it disagrees with the file."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        expected = sidecar.read_text(errors="replace").split()[0].lower()
    except (OSError, IndexError):
        expected = ""
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise EdgeCNNError(f"{path}: its checksum file {sidecar.name} is damaged (no sha256 digest in it); "
                           f"rewrite it (sha256sum), remove it, or pass --no-verify")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise EdgeCNNError(f"{path}: corrupted: its sha256 {actual[:12]}… differs from {sidecar.name} "
                           f"({expected[:12]}…); {FIX}")
    return f"sha256 matches {sidecar.name}"


def check_integrity(path: Path, data: bytes) -> Integrity:
    """Verify `data` (the bytes of `path`) against its embedded hash and sidecar; raise EdgeCNNError when corrupt."""
    by_sidecar = _check_sidecar(path, data)
    found = content_digest(data)
    if found is not None:
        stored, actual = found
        if stored != actual:
            raise EdgeCNNError(f"{path}: corrupted: its content hash {stored[:12]}… does not match its bytes "
                               f"({actual[:12]}…); {FIX}")
        return Integrity(True, True, "content hash matches" + (f"; {by_sidecar}" if by_sidecar else ""))
    if LEGACY_CARD in data and CARD_MARKERS[0] not in data:
        return Integrity(False, False, LEGACY)
    if any(marker in data for marker in CARD_MARKERS):
        raise EdgeCNNError(f"{path}: corrupted: it has an edgecnn model card but no intact {HASH_KEY} entry; {FIX}")
    if by_sidecar:
        return Integrity(True, False, by_sidecar)
    return Integrity(False, False, "unverified: no edgecnn content hash (a file made by another tool)")


def require_sealed_card(path: Path, card: dict | None, integrity: Integrity | None) -> None:
    """A card that parses although the bytes showed no intact hash entry (its keys damaged beyond recognition)."""
    if card is not None and integrity is not None and not integrity.embedded and integrity.detail != LEGACY:
        raise EdgeCNNError(f"{path}: corrupted: it has an edgecnn model card without a valid {HASH_KEY}; {FIX}")
