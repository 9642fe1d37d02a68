"""Thin re-export: the GCA prompts live in coser/gca_prompts.py (shared by scene engine, judge and web app)."""
from coser.gca_prompts import (CONCISE, CONTINUE_FROM_NOTE, DIMENSION_BRIEFS, DIMENSION_CRITERIA,  # noqa: F401
                               DIMENSIONS, JUDGE_PROMPT, NAME_PREFIX, RAG_WRAP, judge_prompt, judge_schema)
