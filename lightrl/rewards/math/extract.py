"""Stage 1: cut the final answer out of a response."""
from __future__ import annotations

import re

from .limits import _TAIL, MAX_ANSWER_CHARS

_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.S)


def _brace_content(text: str, start: int, limit: int) -> str | None:
    """Content of the {...} group opening at text[start]; None if it does not close
    within `limit` chars (truncated output, or longer than any answer we accept)."""
    depth = 0
    end = min(len(text), start + limit)
    for m in _BRACE_TOKENS.finditer(text, start, end):
        tok = m.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:m.start()]
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} or \\fbox{...} (also `\\boxed 5`)."""
    pos = len(text)
    for _ in range(5):  # bounded: a string of unclosed boxes must not cost O(n^2)
        i = max(text.rfind("\\boxed", 0, pos), text.rfind("\\fbox", 0, pos))
        if i < 0:
            return None
        j = i + (6 if text.startswith("\\boxed", i) else 5)
        k = j
        while k < len(text) and text[k] == " ":
            k += 1
        if k < len(text) and text[k] == "{":
            content = _brace_content(text, k, 4 * MAX_ANSWER_CHARS)
            if content is not None:
                return content.strip()
        elif k > j:
            m = re.match(r"[^\s$]+", text[k:k + MAX_ANSWER_CHARS])
            if m:
                return m.group()
        pos = i
    return None


_ANSWER_IS = re.compile(r"(?:final answer|the answer)(?: to [^\n]*?)?\s*(?:is|:|=)\s*:?\s*(.+)", re.I)
_ANSWER_LINE = re.compile(r"^[\s*#>]*answer\s*[:：]\**\s*(.+)$", re.I | re.M)


def _clean_phrase(ans: str) -> str:
    """'$\\frac12$ because ...' -> '\\frac12'; 'x = 5.' -> 'x = 5'."""
    ans = ans.strip().strip("*").strip()
    m = re.search(r"\$\$?(.+?)\$\$?|\\\((.+?)\\\)|\\\[(.+?)\\\]", ans)
    if m:
        return next(g for g in m.groups() if g is not None).strip()
    ans = re.split(r"\.(?:\s|$)|\s(?:because|since|as|which|so|where|for)\b", ans, maxsplit=1)[0]
    return ans.strip().rstrip(".").strip()


def extract_answer(text: str) -> str | None:
    """The final answer in a response, or None.

    Order: last \\boxed{}/\\fbox{} anywhere; else, in the tail of the text, the last
    GSM8K `#### x`; else the last "the (final) answer is x" / "Answer: x".
    """
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    tail = text[-_TAIL:]
    i = tail.rfind("####")
    if i >= 0:
        ans = tail[i + 4:].strip().split("\n", 1)[0].strip()
        return ans or None
    best = None
    for rx in (_ANSWER_IS, _ANSWER_LINE):
        for m in rx.finditer(tail):
            if best is None or m.start() > best.start():
                best = m
    if best is not None:
        ans = _clean_phrase(best.group(1))
        return ans or None
    return None
