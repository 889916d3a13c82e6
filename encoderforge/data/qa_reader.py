"""SQuAD-style extractive QA records: JSONL {"question", "context", "answers": [{"text", "start"}]} with every answer
checked against its context."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from encoderforge import EncoderforgeError
from encoderforge.data.textfile import decode_utf8, jsonl_rows


@dataclass
class QAExample:
    """One extractive QA example: the answer(s) are character spans of `context` (SQuAD style)."""

    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, start character); empty = no answer in the context
    where: str


def read_qa(path: str | Path) -> list[QAExample]:
    """Read SQuAD-style JSONL: {"question", "context", "answers": [{"text", "start"}, ...]} per line.

    Every answer must be the context's text at its start offset; a mismatch names the file, line and answer.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderforgeError(f"{path}: no such file; pass a JSONL file of {{question, context, answers}}")
    out = []
    for line, obj in jsonl_rows(decode_utf8(path), path):
        where = f"{path}:{line}"
        for name in ("question", "context"):
            if not isinstance(obj.get(name), str) or not obj[name].strip():
                raise EncoderforgeError(f"{where}: field {name!r} is missing or empty")
        answers = obj.get("answers", [])
        if not isinstance(answers, list):
            raise EncoderforgeError(f"{where}: field 'answers' must be a list of {{text, start}}")
        spans = []
        for j, a in enumerate(answers):
            if not (isinstance(a, dict) and isinstance(a.get("text"), str) and isinstance(a.get("start"), int)):
                raise EncoderforgeError(f'{where}: answers[{j}] must be {{"text": str, "start": int}}, got {a!r:.60}')
            if obj["context"][a["start"] : a["start"] + len(a["text"])] != a["text"]:
                raise EncoderforgeError(
                    f"{where}: answers[{j}] {a['text']!r:.40} is not the context's text at character {a['start']}; fix the offset"
                )
            spans.append((a["text"], a["start"]))
        out.append(QAExample(obj["question"], obj["context"], spans, where))
    if not out:
        raise EncoderforgeError(f"{path}: holds no examples")
    return out
