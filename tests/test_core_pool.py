"""Bounded pool: order, bound, failures, budget stop."""
import threading
import time

import pytest

from coser.errors import BudgetExceeded
from coser.pool import map_ordered
from coser.usage import Usage


def test_results_in_input_order_with_bound():
    live, peak, lock = [0], [0], threading.Lock()

    def work(x):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.02 * ((7 * x) % 5))
        with lock:
            live[0] -= 1
        return x * x

    assert map_ordered(work, range(20), num_workers=4) == [x * x for x in range(20)]
    assert peak[0] == 4


def test_return_exceptions_keeps_going():
    def work(x):
        if x == 3:
            raise ValueError("bad item")
        return x

    out = map_ordered(work, range(6), num_workers=3, return_exceptions=True)
    assert out[:3] == [0, 1, 2] and isinstance(out[3], ValueError) and out[4:] == [4, 5]
    with pytest.raises(ValueError):
        map_ordered(work, range(6), num_workers=3)


def test_budget_stops_new_work_and_lets_in_flight_finish():
    started = []

    def work(x):
        started.append(x)
        time.sleep(0.05)
        if x == 2:
            raise BudgetExceeded("spent")
        return x

    with pytest.raises(BudgetExceeded):
        map_ordered(work, range(50), num_workers=2)
    assert len(started) < 10


def test_usage_cost_and_budget():
    u = Usage({"m": {"input": 1.0, "output": 2.0}}, max_cost=0.003)
    u.record("m", "s", 1000, 500)
    assert u.total_cost() == pytest.approx(0.002)
    u.check_budget()
    u.record("m", "s", 1000, 0)
    with pytest.raises(BudgetExceeded):
        u.check_budget()
    assert "total" in u.table()
