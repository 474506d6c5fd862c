"""Is this model file the one edgecnn wrote? A content hash inside the file, checked before any runtime sees it.

Measured: of 40 randomly corrupted copies of a real int8 MobileNetV2, the TFLite runtime loaded and ran 10
without any error and onnxruntime 7 — silent wrong answers. So every edgecnn artefact carries, in its model card,

    "content_sha256": "<sha256 of the whole file with these 64 hex digits set to '0'>"

Sealing writes the card with 64 zeros, hashes the file, and overwrites the zeros in place with the digest: same
length, so the flatbuffer/protobuf around it is unchanged. Checking finds the entry in the raw bytes, zeroes it,
hashes, compares. A file that shows any sign of an edgecnn card but no intact entry is refused too (a flip in the
key or a digit is corruption, not a foreign file); only files with no card at all — made by other tools — load
"unverified". A `sha256sum`-style sidecar `FILE.sha256` (`edgecnn export --sha256`) is checked when present.

A model of several files (OpenVINO: .xml with the card, .bin with the weights) is hashed as their bytes in order,
so a changed weights file fails the card's hash; its sidecar has one line per file. In XML the card's quotes are
written `&quot;`: the entry is found in either spelling.

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
# The entry exactly as json.dumps writes it (quotes as such, or as XML writes them in an attribute); inside a JSON
# string a quote is escaped (\" or \&quot;), so label text cannot fake it.
_QUOTE = rb'(?:"|&quot;)'
_ENTRY = re.compile(_QUOTE + HASH_KEY.encode() + _QUOTE + rb": " + _QUOTE + rb"([0-9a-f]{64})" + _QUOTE)
# Keys every edgecnn card has: any of them in the bytes means the file was sealed and must verify.
CARD_MARKERS = tuple(re.compile(_QUOTE + key + _QUOTE) for key in (HASH_KEY.encode(), b"edgecnn_version",
                                                                   b"card_version"))
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
    """Replace the card's placeholder digest with the hash of the model's bytes (placeholder included)."""
    found = [m for m in _ENTRY.finditer(data) if m.group(1) == PLACEHOLDER.encode()]
    if len(found) != 1:
        raise EdgeCNNError(f"cannot seal the model file: expected one {HASH_KEY} placeholder, found {len(found)}")
    start, end = found[0].span(1)
    return data[:start] + hashlib.sha256(data).hexdigest().encode() + data[end:]


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


def sidecar_text(parts: dict[Path, bytes]) -> str:
    """`<hex>  <name>` per file, as sha256sum writes it, so `sha256sum -c FILE.sha256` checks them too."""
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n" for path, data in parts.items())


def _check_sidecar(path: Path, parts: dict[Path, bytes]) -> str | None:
    """The sidecar's verdict: None without one; raises when it disagrees with a file or lacks the model's own."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        lines = [line.split(maxsplit=1) for line in sidecar.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    expected = {name.strip().lstrip("*"): digest.lower() for digest, name in (x for x in lines if len(x) == 2)}
    if not lines or len(expected) != len(lines) or not all(re.fullmatch(r"[0-9a-f]{64}", d) for d in
                                                           expected.values()):
        raise EdgeCNNError(f"{path}: its checksum file {sidecar.name} is damaged (not one sha256 digest and name "
                           f"per line); rewrite it (sha256sum), remove it, or pass --no-verify")
    by_name = {p.name: data for p, data in parts.items()}
    if len(parts) == 1 and len(expected) == 1:  # a renamed single-file model keeps its sidecar's digest
        expected = {path.name: next(iter(expected.values()))}
    if path.name not in expected:
        raise EdgeCNNError(f"{path}: its checksum file {sidecar.name} has no line for {path.name}; {FIX}")
    for name, digest in expected.items():
        if name not in by_name:
            raise EdgeCNNError(f"{path}: its checksum file {sidecar.name} names {name}, which is not a file of "
                               f"this model; {FIX}")
        actual = hashlib.sha256(by_name[name]).hexdigest()
        if actual != digest:
            raise EdgeCNNError(f"{path}: corrupted: the sha256 of {name} {actual[:12]}… differs from {sidecar.name} "
                               f"({digest[:12]}…); {FIX}")
    return f"sha256 matches {sidecar.name}"


def check_integrity(path: Path, parts: dict[Path, bytes]) -> Integrity:
    """Verify the model at `path` (`parts`: each of its files' bytes, in order) against its embedded hash and
    sidecar; raise EdgeCNNError when corrupt."""
    by_sidecar = _check_sidecar(path, parts)
    data = b"".join(parts.values())
    found = content_digest(data)
    if found is not None:
        stored, actual = found
        if stored != actual:
            raise EdgeCNNError(f"{path}: corrupted: its content hash {stored[:12]}… does not match its bytes "
                               f"({actual[:12]}…); {FIX}")
        return Integrity(True, True, "content hash matches" + (f"; {by_sidecar}" if by_sidecar else ""))
    if LEGACY_CARD in data and not CARD_MARKERS[0].search(data):
        return Integrity(False, False, LEGACY)
    if any(marker.search(data) for marker in CARD_MARKERS):
        raise EdgeCNNError(f"{path}: corrupted: it has an edgecnn model card but no intact {HASH_KEY} entry; {FIX}")
    if by_sidecar:
        return Integrity(True, False, by_sidecar)
    return Integrity(False, False, "unverified: no edgecnn content hash (a file made by another tool)")


def require_sealed_card(path: Path, card: dict | None, integrity: Integrity | None) -> None:
    """A card that parses although the bytes showed no intact hash entry (its keys damaged beyond recognition)."""
    if card is not None and integrity is not None and not integrity.embedded and integrity.detail != LEGACY:
        raise EdgeCNNError(f"{path}: corrupted: it has an edgecnn model card without a valid {HASH_KEY}; {FIX}")
