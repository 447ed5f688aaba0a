"""sentiment_analyzer: the specification's critical-keyword rules first, then the VADER lexicon model."""

from __future__ import annotations

import re
from typing import Any

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from actors.base import Actor, StepContext
from actors.domain import Message, Sentiment

# The specification's critical words, plus threats of legal or payment disputes.
CRITICAL = ("fraud", "lawyer", "terrible", "worst", "scam", "lawsuit", "chargeback", "attorney")
URGENT = ("urgent", "urgently", "asap", "immediately", "right now", "emergency")
DELIVERY_PROBLEMS = ("late", "delayed", "wrong", "missing", "broken", "damaged", "lost", "never arrived")
_CRITICAL_RE = re.compile(r"\b(" + "|".join(CRITICAL) + r")\b", re.IGNORECASE)
# "sue" only as a threat ("I will sue you", "I'll sue"), not the name ("my sister Sue ordered a lamp").
_SUE_RE = re.compile(r"(?:\b(?:will|gonna|going\s+to|to|i|we|and)|'ll)\s+sue\b|\bsue\s+(?:you|your|u|them|this|the)\b",
                     re.IGNORECASE)
_URGENT_RE = re.compile(r"\b(" + "|".join(URGENT) + r")\b", re.IGNORECASE)
_PROBLEM_RE = re.compile(r"\b(" + "|".join(DELIVERY_PROBLEMS) + r")\b", re.IGNORECASE)


def analyze(text: str, vader: SentimentIntensityAnalyzer) -> Sentiment:
    """Sentiment, confidence and urgency of a customer message (whole-word keyword matching)."""
    critical = sorted({m.lower() for m in _CRITICAL_RE.findall(text)} | ({"sue"} if _SUE_RE.search(text) else set()))
    if critical:
        return Sentiment(label="NEGATIVE", score=-0.95, confidence=0.95, urgency="critical",
                         critical_keywords=critical, method="keywords")
    compound = float(vader.polarity_scores(text)["compound"])
    problems = bool(_PROBLEM_RE.search(text))
    label = "POSITIVE" if compound >= 0.05 else "NEGATIVE" if compound <= -0.05 else "NEUTRAL"
    if problems and label != "NEGATIVE":
        label, compound = "NEGATIVE", min(compound, -0.3)  # "my order is late" reads neutral to VADER
    if compound <= -0.6 or _URGENT_RE.search(text):
        urgency = "high"
    elif label == "NEGATIVE" or problems:
        urgency = "medium"
    else:
        urgency = "low"
    confidence = round(min(0.99, 0.6 + abs(compound) * 0.4), 3)
    return Sentiment(label=label, score=round(compound, 4), confidence=confidence, urgency=urgency, method="vader")


class SentimentAnalyzer(Actor):
    """Adds `payload.sentiment`."""

    name = "sentiment_analyzer"

    def __init__(self) -> None:
        self.vader = SentimentIntensityAnalyzer()

    async def handle(self, message: Message, ctx: StepContext) -> dict[str, Any]:
        return {"sentiment": analyze(message.payload.customer_message, self.vader)}


ACTOR = SentimentAnalyzer
