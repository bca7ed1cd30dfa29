"""Deterministic generator of the bundled fake-vs-legitimate news task.

Every word list and template here is written for this project. Each article is a short local-news
item whose label is signalled by five independent *cues* (who is quoted, how numbers are given, the
tone of the verbs, whether a date is named, how it closes). Each cue agrees with the label only with
probability ``CUE_RELIABILITY[k]`` and is sometimes absent, so no single cue decides the label:

* a model that learns only the strongest cue reaches about 78% accuracy,
* the Bayes-optimal reader of all five cues about 86%,

which leaves room for a data-size curve that keeps rising past a few hundred examples. Record ``i``
depends only on ``(seed, i)``, so any prefix of a large corpus equals the smaller corpus.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

INSTRUCTION = "Decide whether the following news article is fake or legitimate. Answer with one word."
POSITIVE_LABEL = "fake"
NEGATIVE_LABEL = "legitimate"

# Probability that each cue agrees with the label when present (strongest first), and how often a cue
# is left out of an article altogether.
CUE_RELIABILITY = (0.85, 0.78, 0.72, 0.66, 0.60)
CUE_ABSENT_RATE = 0.15

_SYLLABLES = ["mar", "lo", "ven", "tor", "bel", "qui", "ran", "del", "ash", "ford", "wyn", "cal", "dor", "mi",
              "sel", "bro", "tan", "hal", "rid", "gen", "fal", "ost", "per", "vin"]
_PLACE_SUFFIX = ["Creek", "Falls", "Harbor", "Ridge", "Valley", "Springs", "Point", "Heights"]
_FIRST_NAMES = ["Ana", "Ben", "Carla", "Dev", "Elin", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kemi",
                "Luis", "Mira", "Noor", "Oskar", "Priya", "Rafael", "Sana", "Tomas", "Uma", "Viktor", "Wen"]

_TOPICS = [
    ("the water treatment plant", "water quality", "Department of Public Works"),
    ("the new bus line", "commuter traffic", "Regional Transit Authority"),
    ("the school lunch program", "student nutrition", "School Board"),
    ("the flu vaccination drive", "clinic visits", "County Health Office"),
    ("the downtown housing project", "rent prices", "Housing Commission"),
    ("the river cleanup", "fish populations", "Environmental Agency"),
    ("the library expansion", "book loans", "Library Trust"),
    ("the solar panel subsidy", "household energy bills", "Energy Office"),
    ("the youth football league", "club membership", "Parks and Recreation Department"),
    ("the hospital night shift plan", "emergency wait times", "General Hospital"),
    ("the road repair budget", "pothole complaints", "City Council"),
    ("the farmers market", "local food sales", "Chamber of Commerce"),
]

_LEADS = [
    "Changes to {topic} in {place} are drawing attention this week.",
    "Residents of {place} are talking about {topic}.",
    "A new update on {topic} has been released in {place}.",
    "{place} is reviewing how {topic} has affected {measure}.",
    "Debate continues in {place} over {topic}.",
]

# Cue 1: who is quoted.
_SOURCE_LEGIT = [
    "according to a report from the {place} {agency}",
    "{name}, a spokesperson for the {agency}, said in a statement",
    "records published by the {agency} show",
    "figures released by the {place} {agency} indicate",
]
_SOURCE_FAKE = [
    "according to insiders who refused to be named",
    "a post that has been shared thousands of times claims",
    "people close to the situation are whispering",
    "an anonymous tipster insists",
]
# Cue 2: how numbers are given.
_NUMBER_LEGIT = [
    "{measure} changed by {pct} percent over {months} months",
    "{count} households were included in the count of {measure}",
    "{measure} moved from {count} to {count2} cases",
]
_NUMBER_FAKE = [
    "{measure} has exploded by a thousand percent",
    "literally millions are affected by the change in {measure}",
    "every single family has seen {measure} collapse",
]
# Cue 3: tone of the verbs.
_TONE_LEGIT = [
    "Officials described the results as preliminary.",
    "The agency noted that further checks are planned.",
    "Staff confirmed the numbers at a public meeting.",
]
_TONE_FAKE = [
    "Officials are desperately hiding the truth!",
    "This outrageous scandal has been covered up for too long!",
    "Experts are stunned and nobody can explain it!",
]
# Cue 4: whether a concrete date is named.
_DATE_LEGIT = [
    "The figures were presented on {weekday}.",
    "The review was completed in {month}.",
    "A follow-up session is scheduled for {weekday}, {month} {day}.",
]
_DATE_FAKE = [
    "It all happened recently, they say.",
    "This has been going on for who knows how long.",
    "Nobody knows when it really started.",
]
# Cue 5: how the article closes.
_CLOSE_LEGIT = [
    "The full report is available from the {agency}.",
    "Comments can be sent to the {agency} until the end of the month.",
    "Further details will be published in the next council minutes.",
]
_CLOSE_FAKE = [
    "Share this before it gets deleted!",
    "Wake up and spread the word!",
    "The mainstream media will never tell you this!",
]

_CUES = [
    (_SOURCE_LEGIT, _SOURCE_FAKE),
    (_NUMBER_LEGIT, _NUMBER_FAKE),
    (_TONE_LEGIT, _TONE_FAKE),
    (_DATE_LEGIT, _DATE_FAKE),
    (_CLOSE_LEGIT, _CLOSE_FAKE),
]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]


def _place(rng: random.Random) -> str:
    name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
    return f"{name} {rng.choice(_PLACE_SUFFIX)}"


def _person(rng: random.Random) -> str:
    surname = "".join(rng.choice(_SYLLABLES) for _ in range(2)).capitalize()
    return f"{rng.choice(_FIRST_NAMES)} {surname}"


def generate_article(index: int, seed: int) -> dict[str, str]:
    """Return record ``index`` of the corpus for ``seed`` as an Alpaca-shaped dict with an ``id``."""
    rng = random.Random(f"{seed}:{index}")
    is_fake = rng.random() < 0.5
    topic, measure, agency = rng.choice(_TOPICS)
    count = rng.randint(40, 4000)
    slots = {
        "place": _place(rng),
        "topic": topic,
        "measure": measure,
        "agency": agency,
        "name": _person(rng),
        "pct": f"{rng.randint(1, 19)}.{rng.randint(0, 9)}",
        "months": str(rng.randint(2, 18)),
        "count": str(count),
        "count2": str(count + rng.randint(-30, 60)),
        "weekday": rng.choice(_WEEKDAYS),
        "month": rng.choice(_MONTHS),
        "day": str(rng.randint(1, 28)),
    }
    parts = [rng.choice(_LEADS).format(**slots)]
    source_and_number: list[str] = []
    for cue_index, (legit_variants, fake_variants) in enumerate(_CUES):
        if rng.random() < CUE_ABSENT_RATE:
            continue
        agrees = rng.random() < CUE_RELIABILITY[cue_index]
        shows_fake = is_fake if agrees else not is_fake
        phrase = rng.choice(fake_variants if shows_fake else legit_variants).format(**slots)
        if cue_index < 2:
            source_and_number.append(phrase)
        else:
            parts.append(phrase)
    if source_and_number:
        # Source and number cues read as one sentence: "<source>, <number>."
        sentence = ", ".join(source_and_number)
        parts.insert(1, sentence[0].upper() + sentence[1:] + ".")
    text = " ".join(parts)
    return {
        "id": f"synthetic-{seed}-{index}",
        "instruction": INSTRUCTION,
        "input": text,
        "output": POSITIVE_LABEL if is_fake else NEGATIVE_LABEL,
    }


def iter_articles(count: int, seed: int) -> Iterator[dict[str, str]]:
    """Yield the first ``count`` records of the corpus for ``seed``."""
    for index in range(count):
        yield generate_article(index, seed)
