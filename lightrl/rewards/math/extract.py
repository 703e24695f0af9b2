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


_BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
MAX_BOXES = 8  # boxes looked at, from the end: enough for any answer list, bounded for hostile text
# What may stand between two boxes of one answer: "\boxed{1}, \boxed{2}", "x=\boxed{1} or x=\boxed{2}"
_CONNECTIVE = re.compile(r"(?:[\s$,;&]|\\[,;! ]|\\q?quad|\\[()\[\]]|\\text\s*\{\s*(?:and|or|,)?\s*\}|\band\b|\bor\b"
                         r"|[a-zA-Z](?:_\{?\w+\}?)?\s*=)*", re.I)
_PHRASE = re.compile(r"(?:final answer|the answer|^[\s*#>]*answer)(?: (?:to|for|of) [^\n]*?)?\s*(?:\bis\b|:|：|=)\s*:?\**",
                     re.I | re.M)
_SPAN = re.compile(r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.S)
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
                     r"(?:\s*(?:%|thousand\b|million\b|billion\b))?(?![\w])"
                     r"|\([A-E]\)")  # or a choice letter: "the correct option is (B)."
_CUT = re.compile(r"\.(?:\s|$)|\s(?:because|since|as|which|so|where|for|when|if)\b")
_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of the last complete boxes, in text order; a box inside a
    later-found box is dropped (\\boxed{\\boxed{5}} is one box)."""
    found: list[tuple[int, int, str]] = []
    pos = len(text)
    for _ in range(MAX_BOXES + 4):  # bounded: unclosed boxes must not cost O(n^2)
        i = max(text.rfind("\\boxed", 0, pos), text.rfind("\\fbox", 0, pos))
        if i < 0:
            break
        pos = i
        m = _BOX.match(text, i)
        if m is None:  # \boxedfoo
            continue
        k = m.end()
        j = k
        while k < len(text) and text[k] == " ":
            k += 1
        if k < len(text) and text[k] == "{":
            content = _brace_content(text, k, 4 * MAX_ANSWER_CHARS)
            if content is None:
                continue
            end = k + len(content) + 2
        elif k > j:
            w = re.match(r"[^\s$]+", text[k:k + MAX_ANSWER_CHARS])
            if not w:
                continue
            content, end = w.group(), k + w.end()
        else:
            continue
        found = [b for b in found if not (i <= b[0] and b[1] <= end)]
        found.insert(0, (i, end, content.strip()))
        if len(found) == MAX_BOXES:
            break
    return found


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} or \\fbox{...} (also `\\boxed 5`)."""
    boxes = _boxes(text)
    return boxes[-1][2] if boxes else None


def _last_group(text: str, items: list[tuple[int, int, str]]) -> list[str]:
    """Contents of the last of `items` (start, end, content) and of those just before it
    that only connectives separate: '$x = 3$ and $y = -1$' -> ['x = 3', 'y = -1']."""
    group = [items[-1]]
    for it in reversed(items[:-1]):
        if not _CONNECTIVE.fullmatch(text, it[1], group[0][0]):
            break
        group.insert(0, it)
    return [it[2] for it in group]


def _clean_phrase(ans: str) -> list[str]:
    """What follows "the answer is", up to its sentence's end: its last math spans
    ('$ABCD$ has side $12$' -> ['12']; '$\\frac12$ because $2x=1$' -> ['\\frac12']), else the text."""
    ans = ans.strip().strip("*").strip()
    spans = list(_SPAN.finditer(ans))
    blank = _blank_spans(ans, spans)
    cut = _CUT.search(blank)
    end = cut.start() if cut else len(ans)
    inside = [(m.start(), m.end(), _span_text(m)) for m in spans if m.start() < end]
    if inside:
        return _last_group(ans, inside)
    rest = ans[:end].strip().rstrip(".").strip()
    return [rest] if rest else []


def _blank_spans(text: str, spans) -> str:
    """text with every math span replaced by spaces (positions kept)."""
    out, pos = [], 0
    for m in spans:
        out.append(text[pos:m.start()])
        out.append(" " * (m.end() - m.start()))
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def _span_text(m: re.Match) -> str:
    return next(g for g in m.groups() if g is not None).strip()


def _is_prose(text: str) -> bool:
    """Two or more words outside LaTeX commands and math: a sentence, not a bare answer."""
    plain = _blank_spans(text, _SPAN.finditer(text))
    plain = re.sub(r"\\[a-zA-Z]+(?:\s*\{[^{}]*\})?", " ", plain)
    return len(_WORD.findall(plain)) >= 2


def _last_tokens(text: str) -> list[str]:
    """The last number or choice letter of a text without an answer phrase, or its last
    math spans when they come after it."""
    spans = list(_SPAN.finditer(text))
    nums = list(_NUMBER.finditer(_blank_spans(text, spans)))
    last_span, last_num = (spans[-1] if spans else None), (nums[-1] if nums else None)
    if last_num is not None and (last_span is None or last_num.start() > last_span.start()):
        return [last_num.group().strip()]
    return _last_group(text, [(m.start(), m.end(), _span_text(m)) for m in spans]) if spans else []


def extract_answers(text: str) -> list[str] | None:
    """The final answer of a response as a list of its parts, or None.

    1. Boxes: the last \\boxed{}/\\fbox{} together with the boxes just before it that only
       connectives separate ("\\boxed{1} and \\boxed{2}" -> ['1', '2']); an earlier box
       followed by other text is superseded. A "the (final) answer is" after the last box
       wins over the box.
    2. Else, in the tail of the text, the last GSM8K `#### x`, else the last "the (final)
       answer is x" / "Answer: x" (its last math spans before the sentence ends).
    3. Else a text with math delimiters or prose gives its last math spans or number
       ("Answer $9$", "\\[ 9 \\]", "... is 2/3.", "$x = 3$ and $y = -1$").
    Math spans are grouped like boxes: the last and those just before it that only
    connectives separate.
    None when nothing is found: the caller then takes the whole text as a bare answer.
    """
    if not text or not text.strip():
        return None
    tail_start = max(0, len(text) - _TAIL)
    tail = text[tail_start:]
    boxes = _boxes(text)
    phrase = None
    for phrase in _PHRASE.finditer(tail):
        pass
    if boxes and (phrase is None or tail_start + phrase.start() < boxes[-1][1]):
        return _last_group(text, boxes)
    i = tail.rfind("####")
    if i >= 0:
        ans = tail[i + 4:].strip().split("\n", 1)[0].strip()
        return [ans] if ans else None
    if phrase is not None:
        parts = _clean_phrase(tail[phrase.end():].split("\n", 1)[0])
        if parts:
            return parts
    if _SPAN.search(tail) or _is_prose(tail):
        return _last_tokens(tail) or None
    return None


def extract_answer(text: str) -> str | None:
    """The final answer in a response (the last of its parts, see extract_answers), or None."""
    parts = extract_answers(text)
    return parts[-1] if parts else None
