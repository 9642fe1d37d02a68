"""Reference-protocol behaviours (PROTOCOL.md sections 1-11) as pure functions.

`reference` reproduces the reference implementation's parsing, acceptance and scoring rules;
`fixed` is this toolkit's own improved behaviour (coser/text.py, coser/judge.py).
`python -m coser.protocol check DIR` runs the vector files in DIR through these functions.
"""
from .core import *  # noqa: F401,F403
from .core import PROTOCOLS, DEFAULT_PROTOCOL  # noqa: F401
