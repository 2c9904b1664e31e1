"""The decoding protocol: how every candidate generates, named once and passed whole.

First-token rules (who predicts the first generated token):
- "allocation" (the default): the full model prefills all prompt tokens but the
  last; each allocation reads the last prompt token itself, so every generated
  token, the first included, is the allocation's prediction;
- "full": the full model reads the whole prompt and predicts the first
  generated token (once per batch, shared by every allocation); each allocation
  reads that token and predicts the rest.

With `prompt_under_allocation` each allocation reads the prompt with its own
layers instead of sharing the full model's prompt cache.  Decoders:
"together" advances every allocation of a batch in one loop (`crossdecode`),
"per-candidate" runs them one after another (the reference path); their
outputs are equal up to counted near-ties.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

from skiporacle.data.errors import BadInput

FirstToken = Literal["allocation", "full"]
Decoder = Literal["together", "per-candidate"]
FIRST_TOKEN_RULES: tuple[str, ...] = get_args(FirstToken)
DECODERS: tuple[str, ...] = get_args(Decoder)


@dataclass(frozen=True)
class DecodeProtocol:
    """Greedy decoding settings shared by every candidate of a run; checked once, at construction.

    `max_new_tokens` bounds the generated tokens per sequence (EOS included);
    `eos` holds the ids that end a generation, None until `with_eos` fills them
    from the loaded model (the decoders need them filled).
    """

    max_new_tokens: int
    first_token: FirstToken = "allocation"
    prompt_under_allocation: bool = False
    decoder: Decoder = "together"
    eos: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if self.first_token not in FIRST_TOKEN_RULES:
            raise BadInput(f"first token rule {self.first_token!r}: choose from {', '.join(FIRST_TOKEN_RULES)}")
        if self.decoder not in DECODERS:
            raise BadInput(f"decoder {self.decoder!r}: choose from {', '.join(DECODERS)}")
        if self.max_new_tokens < 0:
            raise BadInput(f"max new tokens must be at least 0, got {self.max_new_tokens}")

    def with_eos(self, eos: frozenset[int]) -> DecodeProtocol:
        """This protocol with its EOS ids (`generate.eos_ids` of the loaded model)."""
        return replace(self, eos=frozenset(eos))

    def stop_ids(self) -> frozenset[int]:
        """The EOS ids; ValueError where they were never filled (a caller that skipped `with_eos`)."""
        if self.eos is None:
            raise ValueError("the decoding protocol has no EOS ids yet: fill them with with_eos(eos_ids(model, tokenizer))")
        return self.eos

    @property
    def shares_prompt(self) -> bool:
        """True where the full model reads the prompt once for every allocation."""
        return not self.prompt_under_allocation


DEFAULT_FIRST_TOKEN: FirstToken = "allocation"  # the rule of every record written before the field existed


def protocol_of(stored: dict, max_new_tokens: int | None = None) -> DecodeProtocol:
    """The protocol of a stored settings dict (settings.json or a controller's), older files included."""
    return DecodeProtocol(
        max_new_tokens=stored["max_new_tokens"] if max_new_tokens is None else max_new_tokens,
        first_token=stored.get("first_token", DEFAULT_FIRST_TOKEN),
        prompt_under_allocation=stored.get("prompt_under_allocation", False),
        decoder=stored.get("decoder", "per-candidate"),
    )
