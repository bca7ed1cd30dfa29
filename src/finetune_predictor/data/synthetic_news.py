"""Deterministic generator of the bundled fake-vs-legitimate news task, at a chosen difficulty.

Every word list and template here is written for this project. Each article is a short local-news
item whose label is signalled by five independent *cues* (who is quoted, how numbers are given, the
tone of the verbs, whether a date is named, how it closes). Each cue agrees with the label only with
probability ``cue_reliability[k]`` and is sometimes absent, and some articles carry no cue at all, so no
single cue decides the label. The generator knows its own Bayes ceiling (:func:`bayes_ceiling`): the
accuracy of the optimal reader of all cues, which no model can beat on average.

Difficulty (``data.synthetic.difficulty``):

* ``easy``: the original corpus: fixed cue phrases, so a handful of words ("insiders", "whispering",
  "shared", "anonymous") classify about 80% of it and a bag-of-words model nears the 86% ceiling;
* ``standard`` (the default): every cue is drawn from many composed paraphrases, so no few words carry
  it, cues are weaker and more often absent, and a tenth of the articles carry no cue;
* ``hard``: weaker and rarer still.

Record ``i`` depends only on ``(seed, i, difficulty)``, so any prefix of a large corpus equals the
smaller corpus.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

INSTRUCTION = "Decide whether the following news article is fake or legitimate. Answer with one word."
POSITIVE_LABEL = "fake"
NEGATIVE_LABEL = "legitimate"



@dataclass(frozen=True)
class Difficulty:
    """How hard the bundled task is: cue reliabilities (strongest first), how often each cue is absent,
    the share of articles with no cue at all, and whether cues are drawn from composed paraphrases."""

    name: str
    cue_reliability: tuple[float, ...]
    cue_absent_rate: float
    no_cue_share: float
    paraphrased: bool


DIFFICULTIES = {
    "easy": Difficulty("easy", (0.85, 0.78, 0.72, 0.66, 0.60), 0.15, 0.0, False),
    "standard": Difficulty("standard", (0.80, 0.74, 0.70, 0.66, 0.62), 0.25, 0.10, True),
    "hard": Difficulty("hard", (0.74, 0.68, 0.64, 0.60, 0.57), 0.35, 0.20, True),
}
DEFAULT_DIFFICULTY = "standard"
# The original corpus's settings, kept under these names for readers of earlier runs.
CUE_RELIABILITY = DIFFICULTIES["easy"].cue_reliability
CUE_ABSENT_RATE = DIFFICULTIES["easy"].cue_absent_rate

_SYLLABLES = ["mar", "lo", "ven", "tor", "bel", "qui", "ran", "del", "ash", "ford", "wyn", "cal", "dor", "mi",
              "sel", "bro", "tan", "hal", "rid", "gen", "fal", "ost", "per", "vin"]
_PLACE_SUFFIX = ["Creek", "Falls", "Harbor", "Ridge", "Valley", "Springs", "Point", "Heights"]
_FIRST_NAMES = ["Ana", "Ben", "Carla", "Dev", "Elin", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kemi",
                "Luis", "Mira", "Noor", "Oskar", "Priya", "Rafael", "Sana", "Tomas", "Uma", "Viktor", "Wen"]

TOPICS = [
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


def _composed(*parts: list[str]) -> list[str]:
    return [" ".join(words) for words in itertools.product(*parts)]


# Paraphrased cues: each phrase is composed from two or three slot lists, so the words that carry a cue
# are spread over dozens of phrasings and no single word is frequent.
_PARAPHRASED_CUES = [
    (_composed(["according to", "as stated by", "as documented by", "as shown by"],
               ["the {place} {agency}", "a report of the {agency}", "{name} of the {agency}",
                "minutes published by the {agency}", "an audit of the {agency}", "the annual review of the {agency}"]),
     _composed(["according to", "as claimed by", "as passed around by", "as hinted at by"],
               ["people who would not give a name", "a message going around online", "a friend of someone on staff",
                "a forum account with no name", "rumours in a group chat", "someone who says they know"])),
    (_composed(["{measure}"], ["changed by {pct} percent over {months} months", "rose by {pct} percent",
                               "fell by {pct} percent since {month}", "moved from {count} to {count2} cases",
                               "stood at {count} in the latest count", "shifted slightly, to {count2}"]),
     _composed(["{measure}"], ["has exploded beyond belief", "tripled overnight", "went through the roof",
                               "crashed to nothing", "doubled in a single day", "is off the charts"])),
    (_composed(["Officials", "Staff", "Analysts", "The committee", "Reviewers", "The agency"],
               ["described the results as", "called the numbers", "presented the figures as"],
               ["preliminary.", "provisional.", "subject to review.", "an early estimate."]),
     _composed(["Officials", "Politicians", "The authorities", "Those in charge", "The council", "Experts"],
               ["are hiding", "keep burying", "refuse to admit", "are lying about", "have suppressed"],
               ["the truth!", "what really happened!", "the real story!"])),
    (["The figures were presented on {weekday}.", "The review was completed in {month}.",
      "A follow-up session is scheduled for {weekday}, {month} {day}.", "Data were collected in {month}.",
      "The meeting took place on {month} {day}.", "Results were filed on {weekday}, {month} {day}."],
     _composed(["It happened recently,", "It started a while ago,", "It began some time back,",
                "Nobody knows when it began,", "It has gone on for ages,"],
               ["people say.", "they claim.", "or so the story goes.", "apparently."])),
    (["The full report is available from the {agency}.", "Comments can be sent to the {agency} until {month} {day}.",
      "Further details will appear in the next council minutes.", "Questions may go to the {agency} office.",
      "A summary will be posted on the {agency} notice board.", "The next update is expected in {month}."],
     _composed(["Share this", "Send this to everyone", "Pass this on", "Repost this", "Tell your neighbours"],
               ["before it is deleted!", "before they take it down!", "now!", "while you still can!"])),
]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]


def place_name(rng: random.Random) -> str:
    name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
    return f"{name} {rng.choice(_PLACE_SUFFIX)}"


def person_name(rng: random.Random) -> str:
    surname = "".join(rng.choice(_SYLLABLES) for _ in range(2)).capitalize()
    return f"{rng.choice(_FIRST_NAMES)} {surname}"


def difficulty_of(name: str) -> Difficulty:
    if name not in DIFFICULTIES:
        raise ValueError(f"data.synthetic.difficulty must be one of {sorted(DIFFICULTIES)}, got {name!r}")
    return DIFFICULTIES[name]


def bayes_ceiling(difficulty: str = DEFAULT_DIFFICULTY) -> float:
    """The accuracy of the Bayes-optimal reader of every cue, exactly: each cue is absent, agrees or
    disagrees with the label independently; the reader sums the log-likelihood ratios. Articles without
    any cue are a coin flip."""
    level = difficulty_of(difficulty)
    present = 1 - level.cue_absent_rate
    correct = 0.0
    for states in itertools.product((None, True, False), repeat=len(level.cue_reliability)):
        probability, evidence = 1.0, 0.0
        for reliability, agrees in zip(level.cue_reliability, states, strict=True):
            if agrees is None:
                probability *= level.cue_absent_rate
                continue
            probability *= present * (reliability if agrees else 1 - reliability)
            evidence += (1 if agrees else -1) * math.log(reliability / (1 - reliability))
        correct += probability * (1.0 if evidence > 0 else 0.5 if evidence == 0 else 0.0)
    return level.no_cue_share * 0.5 + (1 - level.no_cue_share) * correct


def generate_article(index: int, seed: int, difficulty: str = DEFAULT_DIFFICULTY) -> dict[str, str]:
    """Return record ``index`` of the corpus for ``seed`` as an Alpaca-shaped dict with an ``id``."""
    level = difficulty_of(difficulty)
    # The easy corpus keeps the original seeding, so earlier runs' data is reproduced exactly.
    rng = random.Random(f"{seed}:{index}" if difficulty == "easy" else f"{seed}:{difficulty}:{index}")
    is_fake = rng.random() < 0.5
    topic, measure, agency = rng.choice(TOPICS)
    count = rng.randint(40, 4000)
    slots = {
        "place": place_name(rng),
        "topic": topic,
        "measure": measure,
        "agency": agency,
        "name": person_name(rng),
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
    no_cue = level.no_cue_share > 0 and rng.random() < level.no_cue_share
    for cue_index, (legit_variants, fake_variants) in enumerate(_PARAPHRASED_CUES if level.paraphrased else _CUES):
        if no_cue or rng.random() < level.cue_absent_rate:
            continue
        agrees = rng.random() < level.cue_reliability[cue_index]
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


def iter_articles(count: int, seed: int, difficulty: str = DEFAULT_DIFFICULTY) -> Iterator[dict[str, str]]:
    """Yield the first ``count`` records of the corpus for ``seed`` at ``difficulty``."""
    for index in range(count):
        yield generate_article(index, seed, difficulty)
