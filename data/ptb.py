"""Undo Penn-Treebank tokenization (SummEval's CNN/DM text: `team 's draw .`, `-lrb-`, `` ``)."""

from __future__ import annotations

_PTB_BRACKETS = {"-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "-lcb-": "{", "-rcb-": "}"}
_CLITICS = {"'s", "'m", "'re", "'ve", "'ll", "'d", "n't"}
_NO_SPACE_BEFORE = {".", ",", ":", ";", "!", "?", "%", ")", "]", "}", "...", "''"}
_NO_SPACE_AFTER = {"(", "[", "{", "$", "#", "@", "``", "‘"}


def detokenize_ptb(text: str) -> str:
    """Undo Penn-Treebank tokenization as found in CNN/DailyMail (SummEval) text.

    ``team 's draw , `` yes '' -lrb- 0-0 -rrb- .`` becomes ``team's draw, "yes" (0-0).``:
    clitics and punctuation rejoin their word, ```` `` ```` and ``''`` become ``"``, and
    bracket codes become brackets. A lone ``'`` closes an open single quote (one opened by
    ``'Word`` or a previous lone ``'``), otherwise it opens one.
    """
    out: list[str] = []
    glue_next = False  # the previous token wants no space after it
    open_single = 0
    tokens = text.split()
    for i, token in enumerate(tokens):
        token = _PTB_BRACKETS.get(token.lower(), token)
        glue_prev = token in _NO_SPACE_BEFORE or token.lower() in _CLITICS
        glue_after = token in _NO_SPACE_AFTER
        if token == "'":
            glue_prev, glue_after = open_single > 0, open_single == 0
            open_single = open_single - 1 if open_single else 1
        elif token.startswith("'") and len(token) > 1 and token[1].isalpha() and not glue_prev:
            open_single += 1
        elif token == "’":  # "Mother ’ s" is a clitic; otherwise a closing quote
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            glue_prev, glue_after = True, nxt in {"s", "t", "m", "re", "ve", "ll", "d"}
        if token in ("``", "''"):
            token = '"'
        out.append(token if not out or glue_prev or glue_next else " " + token)
        glue_next = glue_after
    return "".join(out)
