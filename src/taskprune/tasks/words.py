"""The word lists the synthetic generators draw from (``resources/synthetic/words.yaml``) and the people in them."""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path
from typing import Any

from taskprune.errors import DataError

RESOURCES_DIR = Path(__file__).resolve().parents[3] / "resources" / "synthetic"


@cache
def load_words(path: str | None = None) -> dict[str, Any]:
    """The word lists of ``resources/synthetic/words.yaml`` (or another YAML file)."""
    import yaml

    p = Path(path) if path else RESOURCES_DIR / "words.yaml"
    if not p.is_file():
        raise DataError(f"{p}: word lists for the synthetic suites not found")
    words = yaml.safe_load(p.read_text())
    if not isinstance(words, dict) or "people" not in words:
        raise DataError(f"{p}: expected a mapping of word lists with at least 'people'")
    return words


class Person:
    def __init__(self, name: str, pronoun: str) -> None:
        self.name, self.p = name, pronoun
        self.P = pronoun.capitalize()
        self.obj = "her" if pronoun == "she" else "him"
        self.pos = "her" if pronoun == "she" else "his"


def people(rng: random.Random, words: dict[str, Any], k: int) -> list[Person]:
    names = rng.sample(sorted(words["people"]), k)
    return [Person(n, words["people"][n]) for n in names]

