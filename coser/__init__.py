"""CoSER toolkit core: LLM client, cache, JSON handling, text utilities, metrics, prompts.

Every script in data_construction/, gca_evaluation/ and chat.py imports from here, so
there is one copy of each utility (the reference kept two drifting copies of utils.py).
"""

__version__ = "0.1.0"
