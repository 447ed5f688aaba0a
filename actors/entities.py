"""Entity extraction by rules: order numbers, tracking numbers, amounts, products. Used by the local model and,
as a safety net, by the intent analyzer when a model misses an order number present in the text."""

from __future__ import annotations

import re

ORDER_NUMBER = re.compile(
    r"(?:order\s*(?:number|no\.?|num|id)?\s*[:#]?\s*#?|#)\s*(\d{4,10})\b|\b(\d{5})\b", re.IGNORECASE
)
TRACKING_NUMBER = re.compile(r"\b(1Z[0-9A-Z]{16})\b", re.IGNORECASE)
AMOUNT = re.compile(r"\$\s?(\d{1,7}(?:[.,]\d{1,2})?)|\b(\d{1,7}(?:\.\d{1,2})?)\s*(?:dollars|usd|bucks)\b",
                    re.IGNORECASE)
PRODUCTS = (
    "headphones", "keyboard", "mug", "lamp", "backpack", "shoes", "watch", "bottle", "charger", "cookbook",
    "jacket", "pan", "laptop", "phone", "book",
)


def order_number(text: str) -> str | None:
    """The first order number in the text (`order 12345`, `#12345`, or a bare 5-digit number)."""
    without_tracking = TRACKING_NUMBER.sub(" ", text)
    for m in ORDER_NUMBER.finditer(without_tracking):
        value = m.group(1) or m.group(2)
        if value:
            return value
    return None


def tracking_number(text: str) -> str | None:
    """The first UPS-style tracking number (1Z + 16 characters)."""
    m = TRACKING_NUMBER.search(text)
    return m.group(1).upper() if m else None


def amount(text: str) -> float | None:
    """The first money amount (`$49.99`, `50 dollars`)."""
    m = AMOUNT.search(text)
    if not m:
        return None
    return float((m.group(1) or m.group(2)).replace(",", "."))


def product(text: str) -> str | None:
    """A product the customer names, from a small vocabulary."""
    lowered = text.lower()
    for name in PRODUCTS:
        if re.search(rf"\b{name}\b", lowered):
            return name
    return None
