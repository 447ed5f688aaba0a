"""Entity extraction by rules: order numbers, tracking numbers, amounts, products. Used by the local model and,
as a safety net, by the intent analyzer when a model misses an order number present in the text."""

from __future__ import annotations

import re

# Each optional part owns the whitespace before it (possessively): adjacent `\s*` runs around optional parts
# made "order" + 200 spaces + "x" backtrack for seconds, cubic in the run's length. Same language as before:
# `order`, an optional `number`/`no.`/`num`/`id`, an optional `:` or `#`, an optional `#`, then the digits.
ORDER_NUMBER = re.compile(
    r"(?:order(?:\s*+(?:number|no\.?|num|id))?(?:\s*+[:#])?(?:\s*+#)?|#)\s*+(\d{4,10})\b|\b(\d{5})\b",
    re.IGNORECASE,
)
TRACKING_NUMBER = re.compile(r"\b(1Z[0-9A-Z]{16})\b", re.IGNORECASE)
# A number with thousands separators (1,000 or 12,345.67) or a plain one with a decimal point or comma (49.99,
# 12,50). The thousands form comes first so that "$1,000" is a thousand, not one.
_NUMBER = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d{1,2})?|\d{1,7}(?:[.,]\d{1,2})?)(?!\d|,\d)"
AMOUNT = re.compile(rf"\$\s?({_NUMBER})|\b({_NUMBER})\s*(?:dollars|usd|bucks)\b", re.IGNORECASE)
THOUSANDS = re.compile(r"^\d{1,3}(?:,\d{3})+(?:\.\d{1,2})?$")
PRODUCTS = (
    "headphones", "keyboard", "mug", "lamp", "backpack", "shoes", "watch", "bottle", "charger", "cookbook",
    "jacket", "pan", "laptop", "phone", "book",
)
# One pattern per product, in the vocabulary's order (the first product of the list that the text names wins).
PRODUCT_WORDS = {name: re.compile(rf"\b{name}\b") for name in PRODUCTS}


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
    """The first money amount (`$49.99`, `$1,000`, `50 dollars`, `12,50 USD`)."""
    m = AMOUNT.search(text)
    return parse_amount(m.group(1) or m.group(2)) if m else None


def parse_amount(value: str) -> float | None:
    """A money amount written by a person or a model: `1,000` and `1,000.50` use thousands separators,
    `12,50` a decimal comma; a leading `$` is allowed. None when it is not a number."""
    cleaned = value.strip().lstrip("$").strip()
    if THOUSANDS.match(cleaned):
        cleaned = cleaned.replace(",", "")
    else:
        cleaned = cleaned.replace(",", ".")
    try:
        return float(cleaned)
    except ValueError:
        return None


def product(text: str) -> str | None:
    """A product the customer names, from a small vocabulary."""
    lowered = text.lower()
    for name, pattern in PRODUCT_WORDS.items():
        if pattern.search(lowered):
            return name
    return None
