"""Stage 2: canonical LaTeX-ish text of an answer (units, \\text, spacing, unicode) and size guards."""
from __future__ import annotations

import re

from .extract import _brace_content, last_boxed
from .limits import MAX_ANSWER_CHARS, MAX_DEPTH, MAX_LITERAL_DIGITS, _ParseError, _Reject

_UNICODE = {"−": "-", "–": "-", "×": "\\times ", "·": "\\cdot ", "÷": "/", "π": "\\pi ", "∞": "\\infty ",
            "√": "\\sqrt", "≤": "\\le ", "≥": "\\ge ", "±": "\\pm ", "∪": "\\cup ", "°": "", "％": "%",
            "²": "^2", "³": "^3", "≠": "\\ne ", "≈": "\\approx ", "€": "", "£": "", "¥": "", "₹": "",
            "½": "(1/2)", "⅓": "(1/3)", "⅔": "(2/3)", "¼": "(1/4)", "¾": "(3/4)"}
_SCALES = {"thousand": 3, "million": 6, "billion": 9}
_SCALE_WORDS = re.compile(r"(\d+(?:\.\d+)?)\s*(thousand|million|billion)\b", re.I)  # 1.5 million
# one spelling per relation: \geqslant, \geq, >= are \ge; \neq, != are \ne; \gt is >
_RELATIONS = [(re.compile(r"\\(?:geqslant|geq|ge)(?![a-zA-Z])|>="), "\\ge "),
              (re.compile(r"\\(?:leqslant|leq|le)(?![a-zA-Z])|<="), "\\le "),
              (re.compile(r"\\(?:neq|ne)(?![a-zA-Z])|(?<![\d)}])!="), "\\ne "),
              (re.compile(r"\\gt(?![a-zA-Z])"), ">"), (re.compile(r"\\lt(?![a-zA-Z])"), "<")]
_PERCENT_WORDS = re.compile(r"\s*\b(?:per\s?cent(?:age)?|percentage|pct)(?:\s+points?)?\b\.?", re.I)
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|textup|mbox|hbox|mathrm|mathbf|mathit|"
                       r"mathsf|operatorname)\s*\{")
_UNIT_WORDS = (r"units?|cm|mm|km|meters?|metres?|centimeters?|kilometers?|inches|inch|feet|foot|ft|yards?|"
               r"miles?|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|dollars?|cents?|"
               r"degrees?|radians?|mph|kg|grams?|pounds?|lbs?|ounces?|oz|liters?|litres?|gallons?|"
               r"people|students|cups?|pieces?|points?|ways|sq|square|cubic|euros?|usd|eur|"
               r"m/s|km/h|kph|m|s|g|h|l|ml")
_TRAILING_UNITS = re.compile(r"(?<=[\d}).\s])(?:\s*(?:%s)\b\.?(?:\^\{?[23]\}?)?)+\s*$" % _UNIT_WORDS, re.I)
_FUNC_WORDS = {"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan",
               "sinh", "cosh", "tanh", "log", "ln", "exp", "pi", "infty"}


def _replace_text_groups(s: str) -> tuple[str, str]:
    """(s with \\text{..} groups and a following ^2 removed, s with them inlined)."""
    without, inlined, pos = [], [], 0
    while True:
        m = _TEXT_CMD.search(s, pos)
        if not m:
            break
        content = _brace_content(s, m.end() - 1, len(s))
        if content is None:
            raise _ParseError("unbalanced \\text{")
        end = m.end() + len(content) + 1
        without.append(s[pos:m.start()])
        inlined.append(s[pos:m.start()])
        word = content.strip()
        if _PERCENT_WORDS.fullmatch(word):  # 5\text{ percent} is 5%, not 5
            without.append("%")
            inlined.append("%")
        elif word.lower() in ("or", "and", ","):
            without.append(",")
            inlined.append(",")
        elif re.fullmatch(r"\([A-Ea-e]\)", word):  # \textbf{(C)} 12: the choice letter is the answer
            without.append(word + " ")
            inlined.append(word + " ")
        else:
            inlined.append(" " + content + " ")
            unit_pow = re.match(r"\s*\^\s*\{?\s*[23]\s*\}?", s[end:])
            if unit_pow and re.search(r"[A-Za-z]", word):
                end += unit_pow.end()
        pos = end
    without.append(s[pos:])
    inlined.append(s[pos:])
    return "".join(without), "".join(inlined)


def _normalize(s: str) -> str:
    """LaTeX/plain answer -> canonical LaTeX-ish string (spaces kept as separators)."""
    for _ in range(3):  # \boxed{\boxed{5}}
        inner = last_boxed(s) if ("\\boxed" in s or "\\fbox" in s) else None
        if inner is None:
            break
        s = inner
    for k, v in _UNICODE.items():
        if k in s:
            s = s.replace(k, v)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = s.replace("\\dbinom", "\\binom").replace("\\tbinom", "\\binom")
    s = re.sub(r"\{([^{}]*)\\over(?![a-zA-Z])([^{}]*)\}", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\(?:left|right)\s*\.", "", s)
    s = re.sub(r"\\(?:euro|pounds|textdollar|textsterling|texteuro)(?![a-zA-Z])", "", s)
    for rx, canonical in _RELATIONS:
        s = rx.sub(lambda _m, c=canonical: c, s)
    s = re.sub(r"\\(?:left|right|[bB]igg?[lr]?|displaystyle)(?![a-zA-Z])", "", s)
    s = s.replace("\\\\", "\0")  # protect matrix row breaks from the spacing rules below
    s = re.sub(r",\\!\s*", ",", s).replace("{,}", ",")
    s = re.sub(r"\\[!]", "", s)
    s = re.sub(r"\\[,;: ]|\\q?quad(?![a-zA-Z])|~", " ", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "%")
    s = re.sub(r"\\(?:\(|\)|\[|\])", "", s)
    s = s.replace("\0", "\\\\")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree", "", s)
    s = re.sub(r"\\(?:inf|infinity)(?![a-zA-Z])|(?<![\\a-zA-Z])(?:infinity|infty|inf)(?![a-zA-Z])", "\\\\infty", s)
    s = re.sub(r"^\s*\\mathbb\s*\{?R\}?\s*$", "(-\\\\infty,\\\\infty)", s)
    without, inlined = _replace_text_groups(s)
    s = without if re.search(r"[0-9A-Za-z\\]", without) else inlined
    s = _PERCENT_WORDS.sub("%", s)
    s = _SCALE_WORDS.sub(lambda m: f"{m[1]}\\times 10^{_SCALES[m[2].lower()]}", s)
    s = _exact_part(s)
    s = re.sub(r"(?i)^\s*(?:[a-z]\s*\\in|[a-z]\s*∈)\s*", "", s)
    s = re.sub(r"(?i)\b(?:or|and)\b", ",", s)
    s = _TRAILING_UNITS.sub("", s)
    s = s.strip().rstrip(".").strip()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d{1,3}(?: \d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "").replace(" ", "")
    s = re.sub(r"\s+", " ", s)
    while len(s) >= 2 and s[0] == "{" and _brace_content(s, 0, len(s)) == s[1:-1]:
        s = s[1:-1].strip()
    return s


def _exact_part(s: str) -> str:
    """x = \\sqrt2 \\approx 1.414 -> x = \\sqrt2: an \\approx chain states the exact value first."""
    if "\\approx" not in s:
        return s
    parts = [p.strip() for p in re.split(r"\\approx(?![a-zA-Z])", s)]
    return next((p for p in parts if p), s)


def decimal_comma(s: str) -> str | None:
    """'1000,99' -> '1000.99', '2,74' -> '2.74', '1.000,5' -> '1000.5'; None when the comma is
    not unambiguously decimal (three digits after it are thousands: '1,000')."""
    m = re.fullmatch(r"(-?\d+),(\d{1,2}|\d{4,})|(-?\d{1,3}(?:\.\d{3})+),(\d+)", s)
    if m is None:
        return None
    if m.group(1) is not None:
        return f"{m.group(1)}.{m.group(2)}"
    return f"{m.group(3).replace('.', '')}.{m.group(4)}"


def _has_words(s: str) -> bool:
    s = re.sub(r"\\(?:begin|end)\s*\{[a-zA-Z*]*\}", " ", s)  # M = \\begin{pmatrix}..: no words
    for w in re.findall(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}", s):
        if w.lower() not in _FUNC_WORDS:
            return True
    return False


def _text_key(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def _guard_text(s: str) -> None:
    if len(s) > MAX_ANSWER_CHARS:
        raise _Reject("answer too long")
    depth = best = 0
    for ch in s:
        if ch in "({[":
            depth += 1
            best = max(best, depth)
        elif ch in ")}]":
            depth -= 1
    if best > MAX_DEPTH:
        raise _Reject("nesting too deep")
    if re.search(r"\d{%d}" % (MAX_LITERAL_DIGITS + 1), s):
        raise _Reject("integer literal too long")
