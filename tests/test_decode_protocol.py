"""The decoding protocol: checked once where it is made, read whole by every decoder, and read back from
settings files written before each of its fields existed."""

from __future__ import annotations

import pytest

from skiporacle.data.errors import BadInput
from skiporacle.eval.decode_protocol import DECODERS, FIRST_TOKEN_RULES, DecodeProtocol, protocol_of
from skiporacle.oracle.oracle_settings import DEFAULTS, OracleSettings, fingerprint


def test_the_rules_are_named_once():
    assert FIRST_TOKEN_RULES == ("allocation", "full") and DECODERS == ("together", "per-candidate")
    default = DecodeProtocol(48)
    assert (default.first_token, default.prompt_under_allocation, default.decoder, default.eos) == \
        ("allocation", False, "together", None)
    assert default.shares_prompt and not DecodeProtocol(48, prompt_under_allocation=True).shares_prompt


@pytest.mark.parametrize("fields, message", [
    ({"first_token": "last"}, "first token rule 'last': choose from allocation, full"),
    ({"decoder": "fast"}, "decoder 'fast': choose from together, per-candidate"),
    ({"max_new_tokens": -1}, "max new tokens must be at least 0, got -1"),
])
def test_a_bad_field_is_refused_at_construction(fields, message):
    with pytest.raises(BadInput, match=message):
        DecodeProtocol(**{"max_new_tokens": 4, **fields})
    settings_fields = {k: v for k, v in fields.items()}
    with pytest.raises(BadInput, match=message):  # the run's settings check the same fields when made
        OracleSettings(**settings_fields)


def test_eos_ids_must_be_filled_before_decoding():
    with pytest.raises(ValueError, match="no EOS ids yet"):
        DecodeProtocol(4).stop_ids()
    filled = DecodeProtocol(4).with_eos({2, 7})
    assert filled.stop_ids() == frozenset({2, 7}) and filled == DecodeProtocol(4, eos=frozenset({2, 7}))


def test_the_settings_name_their_protocol_and_store_it_flat():
    settings = OracleSettings(max_new_tokens=12, first_token="full", prompt_under_allocation=True,
                              decoder="per-candidate")
    assert settings.protocol == DecodeProtocol(12, "full", True, "per-candidate")
    stored = fingerprint(settings)
    assert "protocol" not in stored and stored["first_token"] == "full" and stored["decoder"] == "per-candidate"
    assert protocol_of(stored) == settings.protocol


def test_protocol_of_an_older_settings_file():
    old = {"max_new_tokens": 48}  # a settings.json from before --first-token and --decoder
    assert protocol_of(old) == DecodeProtocol(48, "allocation", False, "per-candidate")
    assert protocol_of({**old, "first_token": "full"}, max_new_tokens=5) == DecodeProtocol(5, "full", decoder="per-candidate")
    assert protocol_of(fingerprint(DEFAULTS)) == DEFAULTS.protocol
