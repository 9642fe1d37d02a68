"""Token usage, cache hits, faults and cost per model and stage, with an optional --max_cost stop.

Calls answered through a Batch API (coser/batch.py) count as calls too; their tokens are also kept
apart (batch_*) because they cost the batch price: `batch_input`/`batch_output` of the model's
prices, half of `input`/`output` when not given (OpenAI's and Anthropic's batch discount).
"""
from __future__ import annotations

import fnmatch
import threading
from collections import defaultdict

from .errors import BudgetExceeded


class Usage:
    def __init__(self, prices: dict | None = None, max_cost: float | None = None):
        self.prices = prices or {}
        self.max_cost = max_cost
        self._lock = threading.Lock()
        # (model, stage) -> counters
        self.rows: dict[tuple[str, str], dict[str, float]] = defaultdict(
            lambda: {"calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0, "retries": 0, "faults": 0,
                     "batch_calls": 0, "batch_prompt_tokens": 0, "batch_completion_tokens": 0}
        )

    def record(self, model: str, stage: str, prompt_tokens: int = 0, completion_tokens: int = 0, cached: bool = False,
               batch: bool = False) -> None:
        with self._lock:
            row = self.rows[(model, stage)]
            if cached:
                row["cache_hits"] += 1
                return
            row["calls"] += 1
            row["prompt_tokens"] += prompt_tokens
            row["completion_tokens"] += completion_tokens
            if batch:
                row["batch_calls"] += 1
                row["batch_prompt_tokens"] += prompt_tokens
                row["batch_completion_tokens"] += completion_tokens

    def fault(self, model: str, stage: str, retried: bool) -> None:
        with self._lock:
            row = self.rows[(model, stage)]
            row["faults"] += 1
            if retried:
                row["retries"] += 1

    def price(self, model: str) -> dict | None:
        p = self.prices.get(model)
        if not p:  # a glob from the models table ("gpt-4o*"), first match in file order
            p = next((v for k, v in self.prices.items() if any(c in k for c in "*?[")
                      and fnmatch.fnmatchcase(model, k)), None)
        return p or None

    def cost_of(self, model: str, prompt_tokens: float, completion_tokens: float, batch: bool = False) -> float | None:
        p = self.price(model)
        if not p:
            return None
        if batch:
            return (prompt_tokens * p.get("batch_input", p["input"] / 2)
                    + completion_tokens * p.get("batch_output", p["output"] / 2)) / 1e6
        return (prompt_tokens * p["input"] + completion_tokens * p["output"]) / 1e6

    def row_cost(self, model: str, row: dict) -> float | None:
        """Online tokens at the online price plus batch tokens at the batch price."""
        online = self.cost_of(model, row["prompt_tokens"] - row["batch_prompt_tokens"],
                              row["completion_tokens"] - row["batch_completion_tokens"])
        if online is None:
            return None
        return online + self.cost_of(model, row["batch_prompt_tokens"], row["batch_completion_tokens"], batch=True)

    def total_cost(self) -> float:
        total = 0.0
        with self._lock:
            for (model, _), row in self.rows.items():
                total += self.row_cost(model, row) or 0.0
        return total

    def check_budget(self) -> None:
        """Called before starting a new (uncached) call."""
        if self.max_cost is not None and self.total_cost() >= self.max_cost:
            raise BudgetExceeded(
                f"--max_cost {self.max_cost:g} USD reached (spent {self.total_cost():.4f}); "
                "finished work is saved, rerun to resume"
            )

    def totals(self) -> dict[str, float]:
        keys = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "retries", "faults", "batch_calls",
                "batch_prompt_tokens", "batch_completion_tokens")
        out = {k: 0 for k in keys}
        with self._lock:
            for row in self.rows.values():
                for k in keys:
                    out[k] += row[k]
        out["cost_usd"] = round(self.total_cost(), 6)
        return out

    def to_dict(self) -> dict:
        with self._lock:
            rows = [
                {"model": m, "stage": s, **row, "cost_usd": self.row_cost(m, row)}
                for (m, s), row in sorted(self.rows.items())
            ]
        return {"rows": rows, "totals": self.totals()}

    def table(self) -> str:
        """A plain-text table for the end of a run."""
        d = self.to_dict()
        if not d["rows"]:
            return "LLM usage: no calls"
        head = ["model", "stage", "calls", "of which batch", "cache hits", "prompt tok", "completion tok", "retries", "cost USD"]
        lines = [head]
        for r in d["rows"]:
            cost = "-" if r["cost_usd"] is None else f"{r['cost_usd']:.4f}"
            lines.append([r["model"], r["stage"], str(r["calls"]), str(r["batch_calls"]), str(r["cache_hits"]), str(r["prompt_tokens"]),
                          str(r["completion_tokens"]), str(r["retries"]), cost])
        t = d["totals"]
        lines.append(["total", "", str(t["calls"]), str(t["batch_calls"]), str(t["cache_hits"]), str(t["prompt_tokens"]),
                      str(t["completion_tokens"]), str(t["retries"]), f"{t['cost_usd']:.4f}"])
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        out = []
        for i, row in enumerate(lines):
            out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)))
            if i == 0 or i == len(lines) - 2:
                out.append("  ".join("-" * w for w in widths))
        return "LLM usage:\n" + "\n".join(out)
