"""The customer's answer to "shall I go ahead?": yes, no, or something else.

A pending action is executed only on a clear yes. The question the agent asks is always about exactly one
action (what, on which order, for how much) and ends with "Reply yes to go ahead, or no to leave it", so a bare
acknowledgement ("ok", "okay", "sure") answers that question: it is a yes. Anything longer than a short reply,
anything that mixes a yes and a no ("yes, no wait"), and anything with a question in it is neither: the pending
action lapses and the message is answered as a new question. Read in linear time: the text is cut to a short
prefix before any pattern sees it, and the patterns are anchored word lists with no nested repetition.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

Reply = Literal["yes", "no", "other"]

# Longer than this, a reply is a sentence with its own content, not an answer to a yes/no question.
MAX_REPLY_CHARS = 60
MAX_REPLY_WORDS = 6

_YES = frozenset({
    "yes", "y", "si", "oui", "yep", "yeah", "yup", "ya", "sure", "ok", "okay", "k", "confirm", "confirmed", "please",
    "go ahead", "yes please", "please do", "do it", "yes do it", "sounds good", "ok go ahead", "okay go ahead",
    "yes go ahead", "go for it", "absolutely", "of course", "correct", "that's right", "that is right",
    "yes thanks", "yes thank you", "ok thanks", "ok thank you", "okay thanks", "okay thank you", "perfect",
    "great", "yes that's fine", "that's fine", "fine", "alright", "all right", "proceed", "yes proceed",
})
_NO = frozenset({
    "no", "n", "nope", "nah", "no thanks", "no thank you", "don't", "do not", "dont", "cancel", "stop",
    "never mind", "nevermind", "not now", "no don't", "no dont", "no do not", "no need", "leave it",
    "please don't", "please dont", "don't do it", "dont do it", "no never mind", "no stop", "abort",
})
_NEGATIONS = frozenset({"no", "not", "don't", "dont", "nope", "nah", "cancel", "stop", "never", "abort"})
_AFFIRMATIONS = frozenset({"yes", "yep", "yeah", "yup", "sure", "ok", "okay", "confirm", "proceed"})

_NOT_WORD = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r" +")


def normalise(text: str) -> str:
    """Lower case, accents and punctuation dropped (apostrophes kept: "don't"), spaces collapsed."""
    folded = unicodedata.normalize("NFKD", text[: MAX_REPLY_CHARS * 2]).encode("ascii", "ignore").decode()
    folded = folded.lower().replace("\u2019", "'")
    return _SPACES.sub(" ", _NOT_WORD.sub(" ", folded)).strip()


def classify_reply(text: str) -> Reply:
    """Whether `text` answers a pending confirmation with a clear yes, a clear no, or neither."""
    if "?" in text[: MAX_REPLY_CHARS * 2] or len(text.strip()) > MAX_REPLY_CHARS:
        return "other"
    words = normalise(text)
    if not words or len(words.split(" ")) > MAX_REPLY_WORDS:
        return "other"
    if words in _YES:
        return "yes"
    if words in _NO:
        return "no"
    tokens = set(words.split(" "))
    # A short reply that says only one side ("yes, yes!", "no no no") still answers; one saying both does not.
    said_no, said_yes = bool(tokens & _NEGATIONS), bool(tokens & _AFFIRMATIONS)
    if said_no and not said_yes and tokens <= _NEGATIONS | {"thanks", "thank", "you", "please", "i", "it"}:
        return "no"
    if said_yes and not said_no and tokens <= _AFFIRMATIONS | {"thanks", "thank", "you", "please", "go", "ahead"}:
        return "yes"
    return "other"
