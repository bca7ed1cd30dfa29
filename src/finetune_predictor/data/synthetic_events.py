"""Deterministic generator of the bundled structured task: extract the event record of a generated local-news
article as a JSON object.

Every template here is written for this project (the places, people and topics come from
:mod:`finetune_predictor.data.synthetic_news`). An article reports one figure about one topic in one place, from
one source, in sentences whose order and phrasing vary; it also names a neighbouring place and a date whose
number is not the figure, so that copying the first place or the first number is not enough. The target is
``{"topic": str, "place": str, "figure": int, "source": str}``; ``source`` is ``"unnamed"`` when the article
cites no one by name. Record ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from finetune_predictor.data.synthetic_news import TOPICS, person_name, place_name

INSTRUCTION = ("Extract the event record of the news article as a JSON object with the keys topic, place, "
               "figure (a whole number) and source (\"unnamed\" if no one is named).")
SCHEMA = {"topic": "string", "place": "string", "figure": "integer", "source": "string"}
UNNAMED = "unnamed"
SOURCE = "bundled-synthetic-events"

_OPENINGS = [
    "{Place} is taking stock of {topic}.",
    "An update on {topic} was shared in {Place} this week.",
    "Residents of {Place} have been asking about {topic}.",
    "In {Place}, {topic} is back on the agenda.",
    "Attention in {Place} has turned to {topic}.",
]
_FIGURES_NAMED = [
    "The {agency} reported {figure} {unit} tied to {measure}.",
    "According to the {agency}, {figure} {unit} were counted in the latest review of {measure}.",
    "{person} of the {agency} said the count of {measure} reached {figure} {unit}.",
    "Figures from the {agency} put the number of {unit} at {figure}.",
]
_FIGURES_UNNAMED = [
    "Some say {figure} {unit} are involved, though no one would put a name to it.",
    "A post going around online claims {figure} {unit} were affected by changes in {measure}.",
    "Word around town is that {figure} {unit} have been counted so far.",
]
_NEIGHBOURS = [
    "Nearby {Neighbour} is watching closely.",
    "A similar plan was dropped in neighbouring {Neighbour} last year.",
    "Officials in {Neighbour} have not commented.",
]
_DATES = [
    "A public meeting is set for {month} {day}.",
    "The next review is due on {month} {day}.",
    "Comments are open until {month} {day}.",
]
_UNITS = ["residents", "households", "visitors", "applications", "complaints", "participants"]
_MONTHS = ["March", "April", "May", "June", "September", "October", "November"]


def _figure_text(figure: int, rng: random.Random) -> str:
    """The figure as an article writes it: with or without a thousands separator."""
    return f"{figure:,}" if figure >= 1000 and rng.random() < 0.5 else str(figure)


def generate_event(index: int, seed: int) -> dict[str, str]:
    """Record ``index`` of the corpus for ``seed``: an Alpaca-shaped dict whose ``output`` is the JSON record."""
    rng = random.Random(f"events:{seed}:{index}")
    topic, measure, agency = rng.choice(TOPICS)
    place, neighbour = place_name(rng), place_name(rng)
    while neighbour == place:
        neighbour = place_name(rng)
    figure = rng.randint(12, 9800)
    named = rng.random() < 0.75
    slots = {"Place": place, "Neighbour": neighbour, "topic": topic, "measure": measure, "agency": agency,
             "person": person_name(rng), "figure": _figure_text(figure, rng), "unit": rng.choice(_UNITS),
             "month": rng.choice(_MONTHS), "day": str(rng.randint(1, 28))}
    body = [rng.choice(_FIGURES_NAMED if named else _FIGURES_UNNAMED), rng.choice(_NEIGHBOURS), rng.choice(_DATES)]
    rng.shuffle(body)
    sentences = [rng.choice(_OPENINGS), *body]
    text = " ".join(sentence.format(**slots) for sentence in sentences)
    record = {"topic": topic.removeprefix("the "), "place": place, "figure": figure,
              "source": agency if named else UNNAMED}
    return {"id": f"events-{seed}-{index}", "instruction": INSTRUCTION, "input": text[0].upper() + text[1:],
            "output": json.dumps(record, ensure_ascii=False)}


def iter_events(count: int, seed: int) -> Iterator[dict[str, str]]:
    """The first ``count`` records of the corpus for ``seed``."""
    for index in range(count):
        yield generate_event(index, seed)
