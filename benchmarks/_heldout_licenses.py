"""A held-out evaluation text of another domain than news and Wikipedia, built from material
every Debian machine has: the license texts of /usr/share/common-licenses (legal English).

One text per license family, the latest version only (GPL-2 and GPL-3, LGPL-2.1, GFDL-1.3,
Apache-2.0, MPL-2.0, Artistic, BSD, CC0-1.0: near-duplicate versions would score the same prose
twice). Each paragraph (lines up to a blank line) becomes one line with single spaces, so the hard
line breaks of the plain-text files do not make a different text from what a model reads as
prose; the documents' paragraphs in this order are the text's lines. Never calibrate or tune on it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

LICENSES = ("Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GFDL-1.3", "GPL-2", "GPL-3", "LGPL-2.1", "MPL-2.0")
FOLDER = Path("/usr/share/common-licenses")
#: sha256 of the built text as measured on Debian 12 (base-files 12.4+deb12u*): a different
#: value means a different text, and its rows are not comparable with earlier ones.
SHA256 = "da43874d4f0bddd788a88beaacb1cbddee4b78255ad23bc0459c745bae229dd1"


def license_lines(folder: Path = FOLDER) -> list[str]:
    lines: list[str] = []
    for name in LICENSES:
        paragraph: list[str] = []
        for raw in (folder / name).read_text(encoding="utf-8").splitlines() + [""]:
            if raw.strip():
                paragraph.append(raw.strip())
            elif paragraph:
                lines.append(" ".join(paragraph))
                paragraph = []
    return lines


def text_sha256(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def checked_lines(folder: Path = FOLDER) -> list[str]:
    """:func:`license_lines`, refused when they are not the text the results were measured on."""
    lines = license_lines(folder)
    got = text_sha256(lines)
    if got != SHA256:
        raise SystemExit(f"the license text built from {folder} has sha256 {got}, not {SHA256}: "
                         "this machine's base-files differ, and its perplexities are not comparable")
    return lines
