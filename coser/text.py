"""Text utilities shared by construction, transform, evaluation and chat."""
from __future__ import annotations

import re

# Inner thoughts are single-line, non-greedy [...] spans (reference behaviour in both stages).
_THOUGHT = re.compile(r"\[.*?\]")
# Evaluation also drops <system_thinking>/<role_thinking>/<_thinking>-style blocks (DOTALL).
_THINK_BLOCKS = [
    re.compile(r"<(system|role)[_ ]think(?:ing)?>.*?</\1[_ ]think(?:ing)?>", re.DOTALL),
    re.compile(r"<[_ ]+think(?:ing)?>.*?</[_ ]+think(?:ing)?>", re.DOTALL),
]


def remove_inner_thoughts(text: str, eval_mode: bool = False) -> str:
    """Delete [thoughts]; strip each line; collapse newline runs to one; strip.

    eval_mode adds the evaluation version's removal of *_thinking blocks.
    """
    if eval_mode:
        for pat in _THINK_BLOCKS:
            text = pat.sub("", text)
    text = _THOUGHT.sub("", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = re.sub(r"\n+", "\n", text)
    return text.strip()
