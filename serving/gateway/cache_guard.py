"""A lexical guard on top of cosine similarity: never equate questions of opposite meaning.

Sentence embeddings place "how do I enable X" and "how do I disable X" very close (cosine
0.93 with all-MiniLM-L6-v2; "increase"/"decrease the timeout" 0.97, above most paraphrases),
so no threshold separates them. Two questions may share an answer only if, besides being
close, they agree on what embeddings blur:

- numbers (``15% of 200`` vs ``15% of 300``) must match exactly, as multisets;
- negation (``not``, ``never``, ``n't``, ...) must be present in both or neither;
- on every polarity axis (enable/disable, open/closed, increase/decrease, ...) the two
  questions must not take opposite sides;
- names: if each question carries a capitalised name or identifier the other lacks
  (``John`` vs ``Sarah``), they are different questions.

Pure functions over strings; the cache calls :func:`compatible` on a candidate it found.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_\-.]*[A-Za-z0-9]|[A-Za-z]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NEGATIONS = frozenset(
    {"not", "no", "never", "without", "cannot", "nor", "none", "nothing", "neither", "nobody"}
)
# Each axis: (words on one side, words on the other side).
_AXES: tuple[tuple[frozenset[str], frozenset[str]], ...] = tuple(
    (frozenset(a.split()), frozenset(b.split()))
    for a, b in (
        (
            "enable enabled enabling activate activated on",
            "disable disabled disabling deactivate off",
        ),
        ("open opened opening", "close closed closing shut"),
        (
            "increase increased increasing raise more higher larger bigger up",
            "decrease decreased decreasing lower less fewer smaller reduce down",
        ),
        ("add added adding insert create", "remove removed removing delete deleted drop"),
        ("start started starting begin resume", "stop stopped stopping end pause halt"),
        ("allow allowed permit accept approve grant", "deny denied forbid reject block revoke"),
        ("include included including", "exclude excluded excluding"),
        ("upload uploading import", "download downloading export"),
        (
            "encrypt encrypted encryption encode compress",
            "decrypt decrypted decryption decode decompress",
        ),
        ("lock locked", "unlock unlocked"),
        ("show shown visible", "hide hidden invisible"),
        ("install installed installing", "uninstall uninstalled uninstalling"),
        ("subscribe subscribed", "unsubscribe unsubscribed"),
        ("connect connected", "disconnect disconnected"),
        ("login log-in sign-in signin", "logout log-out sign-out signout"),
        ("before earlier", "after later"),
        ("min minimum least", "max maximum most"),
        ("true yes", "false"),
        ("buy purchase", "sell"),
        ("first", "last"),
        ("left", "right"),
        ("inside internal", "outside external"),
        ("push", "pull"),
        ("positive", "negative"),
        ("best", "worst"),
        ("cheapest", "expensive"),
        ("always", "sometimes"),
        ("input", "output"),
        ("import", "export"),
        ("public", "private"),
        ("fast faster fastest", "slow slower slowest"),
    )
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.replace("’", "'"))


_PUNCT = "\"'()[]{}<>,;:!?."


def _lower_words(text: str) -> set[str]:
    words = {w.lower() for w in _words(text)}
    words.update(t.strip(_PUNCT).lower() for t in text.split())
    if "n't" in text.lower() or "n’t" in text.lower():
        words.add("not")
    return words


def _names(text: str) -> set[str]:
    """Capitalised words not opening a sentence, and identifiers with digits or inner caps."""
    names: set[str] = set()
    sentence_start = True
    for match in re.finditer(r"\S+", text):
        token = match.group(0)
        word = token.strip(_PUNCT)
        if word and (
            (word[0].isupper() and not sentence_start and not word.isupper())
            or (any(c.isdigit() for c in word) and any(c.isalpha() for c in word))
            or (any(c.isupper() for c in word[1:]) and any(c.islower() for c in word))
        ):
            names.add(word.lower())
        sentence_start = token.endswith((".", "?", "!", ":"))
    return names


def _sides(words: set[str]) -> list[set[int]]:
    out = []
    for plus, minus in _AXES:
        side = set()
        if words & plus:
            side.add(1)
        if words & minus:
            side.add(-1)
        out.append(side)
    return out


def compatible(a: str, b: str) -> bool:
    """Whether questions ``a`` and ``b`` may share an answer as far as words can tell."""
    if Counter(_NUMBER.findall(a)) != Counter(_NUMBER.findall(b)):
        return False
    wa, wb = _lower_words(a), _lower_words(b)
    if bool(wa & _NEGATIONS) != bool(wb & _NEGATIONS):
        return False
    for side_a, side_b in zip(_sides(wa), _sides(wb), strict=True):
        if side_a and side_b and side_a != side_b:
            return False
    only_a = {n for n in _names(a) if n not in wb}
    only_b = {n for n in _names(b) if n not in wa}
    return not (only_a and only_b)
