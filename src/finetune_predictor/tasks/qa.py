"""Extractive question answering on SQuAD-format data: greedy generation scored by exact match and token F1
under the SQuAD answer normalisation, each the maximum over a question's reference answers."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from finetune_predictor.data.readers import squad_normalise

_PREFIX = re.compile(r"^\s*(?:the answer is|answer)\s*[:\-]?\s*", re.IGNORECASE)
_SPECIAL = re.compile(r"<\|[^|>]*\|>|</?s>")
DEFAULT_NO_ANSWER = "unanswerable"


def exact_match(prediction: str, reference: str) -> float:
    return float(squad_normalise(prediction) == squad_normalise(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after normalisation; two empty answers agree (1.0)."""
    predicted, expected = squad_normalise(prediction).split(), squad_normalise(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def _as_references(value: Any) -> list[str]:
    if not isinstance(value, list | tuple | np.ndarray):
        return [str(value)]
    references = [str(v) for v in value]
    if not references:
        raise ValueError("a QA record needs at least one reference answer")
    return references


@dataclass(frozen=True)
class QATask:
    """The answer is a span of the context; ``no_answer`` is the target of unanswerable questions (when
    ``data.qa.include_unanswerable`` admits them)."""

    no_answer: str = DEFAULT_NO_ANSWER
    name: str = "qa"
    positive_label: str | None = None
    primary_metric: ClassVar[str] = "f1"  # logged as baseline_primary / finetuned_primary
    max_new_tokens: ClassVar[int] = 32  # SQuAD answers are a few words; generation also stops at end of turn
    # What features() returns.
    feature_names: ClassVar[tuple[str, ...]] = (
        "mf_qa_answer_words_mean", "mf_qa_answer_in_context_rate", "mf_qa_unanswerable_share")
    default_test_split: ClassVar[str] = "group"  # by article: no passage is shared by training and test

    @classmethod
    def from_params(cls, data_params: dict[str, Any]) -> QATask:
        qa = data_params.get("qa") or {}
        return cls(str(qa.get("no_answer") or DEFAULT_NO_ANSWER))

    def target(self, record: dict[str, Any]) -> str:
        return str(record["output"])

    def candidates(self) -> None:
        return None

    def parse(self, generated: str) -> str | None:
        """The first line of the generation without an "Answer:" prefix; an empty answer is a parse failure."""
        text = _SPECIAL.sub(" ", generated).strip()
        text = _PREFIX.sub("", text.splitlines()[0] if text else "").strip()
        return text or None

    def metrics(self, y_true: Sequence[Any], y_pred: Sequence[str | None],
                scores: np.ndarray | None = None) -> dict[str, Any]:
        """Exact match and token F1 (max over each question's references), parse failures, and the two
        scores split into answerable and unanswerable questions when both occur."""
        if len(y_true) != len(y_pred):
            raise ValueError(f"{len(y_true)} references but {len(y_pred)} predictions")
        if not len(y_true):
            raise ValueError("No examples to score")
        references = [_as_references(value) for value in y_true]
        predictions = [p or "" for p in y_pred]
        # A parse failure (no answer written) scores 0, never a match with an answer that normalises to "".
        em = np.array([max(exact_match(p, r) for r in refs) if p else 0.0
                       for p, refs in zip(predictions, references, strict=True)])
        f1 = np.array([max(token_f1(p, r) for r in refs) if p else 0.0
                       for p, refs in zip(predictions, references, strict=True)])
        result: dict[str, Any] = {
            "n": len(references), "exact_match": float(em.mean()), "f1": float(f1.mean()),
            "parse_failures": int(sum(p is None for p in y_pred)),
            "parse_failure_rate": float(np.mean([p is None for p in y_pred])),
            "answer_words_mean": float(np.mean([len(p.split()) for p in predictions])),
        }
        unanswerable = np.array([squad_normalise(refs[0]) == squad_normalise(self.no_answer) for refs in references])
        if unanswerable.any() and not unanswerable.all():
            result.update({"has_answer_exact_match": float(em[~unanswerable].mean()),
                           "has_answer_f1": float(f1[~unanswerable].mean()),
                           "no_answer_accuracy": float(em[unanswerable].mean())})
        return result

    def corrupt(self, targets: Sequence[str], rate: float, rng: np.random.Generator) -> list[str]:
        """Shuffled answers: a share ``rate`` of the questions get another chosen question's answer (a cycle
        over the chosen questions, so every chosen answer moves)."""
        out = list(targets)
        chosen = rng.choice(len(out), size=round(len(out) * rate), replace=False)
        if len(chosen) == 1 and len(out) > 1:
            other = int(rng.choice([i for i in range(len(out)) if i != chosen[0]]))
            out[chosen[0]] = targets[other]
        elif len(chosen) > 1:
            for index, source in zip(chosen, np.roll(chosen, 1), strict=True):
                out[index] = targets[source]
        return out

    def features(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Answer length in words, the share of answers found verbatim (normalised) in their prompt, and the
        share of unanswerable questions."""
        targets = [self.target(record) for record in records]
        in_context = [squad_normalise(answer) in squad_normalise(f"{record['instruction']} {record.get('input') or ''}")
                      for record, answer in zip(records, targets, strict=True)]
        no_answer = squad_normalise(self.no_answer)
        return {"mf_qa_answer_words_mean": float(np.mean([len(t.split()) for t in targets])),
                "mf_qa_answer_in_context_rate": float(np.mean(in_context)),
                "mf_qa_unanswerable_share": float(np.mean([squad_normalise(t) == no_answer for t in targets]))}
