"""Every regular expression of the code base against pathological input: long runs of spaces, digits,
separators and repeated keywords, 3,000-4,000 characters, each search within a time bound (a backtracking
pattern takes seconds to hours on such input; a linear one takes well under a millisecond)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import REPO

PACKAGES = ("actors", "saga", "gateway", "mocks", "observability", "supportmesh")
# Generous: machines differ; a backtracking pattern misses it by orders of magnitude (the old ORDER_NUMBER
# took 8 s for "order" + 200 spaces + "x").
BOUND_S = 0.5
RE_CALLS = {"search", "match", "fullmatch", "findall", "finditer", "sub", "subn", "split"}


def _patterns_in(value: object, name: str, out: dict[str, re.Pattern[str]]) -> None:
    if isinstance(value, re.Pattern):
        out[name] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            _patterns_in(item, f"{name}[{key!r}]", out)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _patterns_in(item, f"{name}[{i}]", out)


def collect_patterns() -> dict[str, re.Pattern[str]]:
    """Module-level compiled patterns (also inside module-level lists, tuples and dicts) of every module."""
    found: dict[str, re.Pattern[str]] = {}
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
            if info.name.endswith(".__main__"):
                continue
            module = importlib.import_module(info.name)
            for attr, value in vars(module).items():
                _patterns_in(value, f"{info.name}.{attr}", found)
    return found


PATTERNS = collect_patterns()
# Text patterns only (no bytes patterns exist today; they would need bytes input).
TEXT_PATTERNS = {name: p for name, p in PATTERNS.items() if isinstance(p.pattern, str)}


def test_the_collection_finds_the_patterns_that_matter() -> None:
    for name in ("actors.entities.ORDER_NUMBER", "actors.entities.AMOUNT", "gateway.schemas.EMAIL",
                 "actors.guardrail_validator.EMAIL", "actors.local_model.NEGATED_ACTION", "saga.protocol.MESSAGE_ID"):
        assert name in TEXT_PATTERNS, sorted(TEXT_PATTERNS)
    assert len(TEXT_PATTERNS) >= 40


def test_no_inline_patterns_escape_the_collection() -> None:
    """`re.search(r"...", text)` inside a function is invisible to the collection: every pattern is a
    module-level compiled one."""
    inline = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
                        and node.func.attr in RE_CALLS):
                    inline.append(f"{path.relative_to(REPO)}:{node.lineno} re.{node.func.attr}")
    assert inline == []


def timed(pattern: re.Pattern[str], text: str) -> float:
    started = time.perf_counter()
    pattern.search(text)
    for _ in pattern.finditer(text):
        pass
    return time.perf_counter() - started


def assert_fast(text: str) -> None:
    slow = {}
    for name, pattern in TEXT_PATTERNS.items():
        elapsed = timed(pattern, text)
        if elapsed > BOUND_S:
            slow[name] = round(elapsed, 3)
    assert not slow, (len(text), text[:80], slow)


KNOWN_BAD = [
    "order" + " " * 4000 + "x",
    "order number" + " " * 2000 + ":" + " " * 1990 + "x",
    "order " * 700,
    "order #" * 570 + "x",
    "#" + " " * 3999,
    "1" * 4000,
    "1,000" * 800,
    "1." * 2000,
    "$" + "1," * 1999,
    "a" * 4000,
    "a@" + "a." * 2000,
    "a@" * 2000,
    "guarantee " * 400,
    "issued " * 600,
    "sent " * 800,
    "don't " * 700,
    "will " * 800,
    "```json " * 500,
    ", " * 2000,
    " " * 4000,
    "\n" * 4000,
]


@pytest.mark.parametrize("text", KNOWN_BAD, ids=[t[:12].strip() or repr(t[:3]) for t in KNOWN_BAD])
def test_known_pathological_inputs(text: str) -> None:
    assert_fast(text)


FRAGMENTS = ["order", "order ", "number", "no.", "num", "id", "#", ":", " ", "  ", "\t", "\n", "1", "12345",
             "0", ",", ".", "$", "1,000", "dollars", "usd", "@", "a", "example.com", "1Z", "guarantee", "refund",
             "issued", "sent", "replacement", "will definitely", "promise", "free", "cancel", "can cancel",
             "don't", "want", "a ", "sue", "will", "```", "json", "{", "}", "-", "/", "_", "'", "x", "é", "\u202e"]


@st.composite
def pathological(draw) -> str:
    """A few fragments, each repeated many times, filling 3,000-4,000 characters, with an odd last character."""
    runs = draw(st.lists(st.tuples(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=3),
                                   st.integers(1, 2000)), min_size=1, max_size=4))
    text = "".join("".join(unit) * count for unit, count in runs)
    length = draw(st.integers(3000, 4000))
    while len(text) < length:
        text += text
    return text[: length - 1] + draw(st.sampled_from(["x", "!", " ", "9", "@", "."]))


@given(text=pathological())
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_generated_pathological_inputs(text: str) -> None:
    assert_fast(text)


async def test_intent_analyzer_answers_a_pathological_message_quickly() -> None:
    """The whole step (local model, entity safety net) on 3 KB that used to stall the actor for hours."""
    from actors.intent_analyzer import IntentAnalyzer
    from supportmesh.config import Settings
    from tests.support.fakes import FakeContext, make_message

    actor = IntentAnalyzer()
    await actor.start(Settings())
    for text in ("refund my order" + " " * 3000 + "x", "order " * 500 + "#" + " " * 50 + "x"):
        started = time.perf_counter()
        out = await actor.handle(make_message(text), FakeContext())
        assert time.perf_counter() - started < 2.0
        assert out["intent"].entities.order_number is None
