"""Thin re-export: the scene engine lives in coser/scene.py (shared with the web app)."""
from coser.scene import (MAX_ROUNDS, MAX_TOKENS, MIN_ROUND_TO_END, Agent, involved_profiles,  # noqa: F401
                         motivation_of, reference_chat, sample_key, sample_rng, sim_settings, simulate,
                         simulation_spec)
