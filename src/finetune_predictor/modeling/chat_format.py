"""The one prompt formatter, shared by training, evaluation and probes.

Training sequences are ``prompt_ids + answer_ids`` and inference feeds exactly ``prompt_ids``: both come
from :class:`PromptFormatter`, so the template seen in training is the template seen at inference
(their mismatch is the classic bug of this field).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Used only for base models whose tokenizer has no chat template.
FALLBACK_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


@dataclass
class PromptFormatter:
    """Turns (instruction, input, answer) into token ids with the model's own chat template.

    ``max_length`` bounds prompt + answer; an over-long input is cut from its end so that the answer
    and the end-of-turn token are never truncated away.
    """

    tokenizer: Any
    max_length: int = 512
    system_prompt: str | None = None
    use_chat_template: bool = True  # False for base models: the fallback template, whatever the tokenizer has
    _answer_cache: dict[str, list[int]] = field(default_factory=dict, repr=False)
    # Prompts whose input was shortened to fit max_length, counted so that the run record can say so.
    truncated_prompts: int = field(default=0, repr=False)

    @property
    def uses_chat_template(self) -> bool:
        return self.use_chat_template and bool(getattr(self.tokenizer, "chat_template", None))

    def messages(self, instruction: str, input_text: str) -> list[dict[str, str]]:
        user = f"{instruction}\n\n{input_text}" if input_text else instruction
        messages = [{"role": "user", "content": user}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def prompt_text(self, instruction: str, input_text: str) -> str:
        if not self.uses_chat_template:
            return FALLBACK_TEMPLATE.format(instruction=instruction, input=input_text)
        return self.tokenizer.apply_chat_template(
            self.messages(instruction, input_text), tokenize=False, add_generation_prompt=True
        )

    def completion_text(self, answer: str) -> str:
        """The answer as the template renders it for the assistant, ending with the end-of-turn token."""
        eos = self.tokenizer.eos_token or ""
        if not self.uses_chat_template:
            return answer + eos
        probe = self.messages("x", "")
        prompt = self.tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        full = self.tokenizer.apply_chat_template(
            [*probe, {"role": "assistant", "content": answer}], tokenize=False
        )
        if not full.startswith(prompt):
            raise ValueError("The chat template renders the prompt differently with and without the answer; "
                             "set a fallback template for this model.")
        # Whitespace the template adds after the end-of-turn token is never generated before stopping.
        completion = full[len(prompt):].rstrip()
        special = set(self.tokenizer.all_special_tokens)
        if not any(completion.endswith(token) for token in special if token):
            completion += eos
        return completion

    def answer_ids(self, answer: str) -> list[int]:
        if answer not in self._answer_cache:
            self._answer_cache[answer] = self.tokenizer(
                self.completion_text(answer), add_special_tokens=False
            )["input_ids"]
        return list(self._answer_cache[answer])

    def prompt_ids(self, instruction: str, input_text: str, reserve: int = 0) -> list[int]:
        """Token ids of the prompt, the input shortened if prompt + ``reserve`` would exceed max_length."""
        ids = self._encode_prompt(instruction, input_text)
        budget = self.max_length - reserve
        if len(ids) <= budget:
            return ids
        input_ids = self.tokenizer(input_text, add_special_tokens=False)["input_ids"]
        keep = len(input_ids) - (len(ids) - budget) - 2
        # Only the input is ever cut: slicing the prompt's tail would cut the assistant header the answer
        # follows. Decoding and re-encoding can merge tokens differently, so shorten until it fits.
        while keep > 0:
            ids = self._encode_prompt(instruction, self.tokenizer.decode(input_ids[:keep]))
            if len(ids) <= budget:
                self.truncated_prompts += 1
                return ids
            keep -= max(1, len(ids) - budget)
        raise ValueError(f"The instruction alone (with the answer's {reserve} tokens) is longer than "
                         f"max_length={self.max_length} tokens: raise model.max_length or shorten the instruction.")

    def _encode_prompt(self, instruction: str, input_text: str) -> list[int]:
        return self.tokenizer(self.prompt_text(instruction, input_text), add_special_tokens=False)["input_ids"]

    def training_example(self, instruction: str, input_text: str, answer: str) -> dict[str, list[int]]:
        """``input_ids`` and ``labels`` with the loss on the answer tokens only (-100 elsewhere)."""
        answer_ids = self.answer_ids(answer)
        prompt_ids = self.prompt_ids(instruction, input_text, reserve=len(answer_ids))
        return {
            "input_ids": prompt_ids + answer_ids,
            "labels": [-100] * len(prompt_ids) + answer_ids,
        }
