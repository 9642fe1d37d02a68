"""Given-Circumstance Acting evaluation: multi-agent simulation of held-out scenes, then judging."""
