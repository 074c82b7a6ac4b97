"""``BackendPool``: one request per LLM copy, copies made on demand up to the setting, a warm copy lent first."""

from __future__ import annotations

import threading
import time

import pytest

from diffagent.agent.llm import BackendPool
from diffagent.errors import UserInputError


class FakeBackend:
    made = 0

    def __init__(self):
        FakeBackend.made += 1
        self.n = FakeBackend.made
        self.lock = threading.RLock()


def test_copies_are_made_on_demand_up_to_the_size():
    FakeBackend.made = 0
    pool = BackendPool(FakeBackend, size=2)
    with pool.borrow() as a:
        with pool.borrow() as b:
            assert a is not b and FakeBackend.made == 2
    with pool.borrow() as c:
        assert c is a or c is b
    assert FakeBackend.made == 2  # no third copy


def test_a_quiet_pool_reuses_the_last_returned_copy():
    FakeBackend.made = 0
    pool = BackendPool(FakeBackend, size=4)
    for _ in range(5):
        with pool.borrow() as b:
            pass
    assert FakeBackend.made == 1 and b.n == 1


def test_requests_beyond_the_size_wait_and_never_share_a_copy():
    pool = BackendPool(FakeBackend, size=2)
    in_use: set[int] = set()
    peak = [0]
    guard = threading.Lock()
    errors = []

    def request():
        with pool.borrow() as b:
            with guard:
                if id(b) in in_use:
                    errors.append("shared")
                in_use.add(id(b))
                peak[0] = max(peak[0], len(in_use))
            time.sleep(0.02)
            with guard:
                in_use.discard(id(b))

    threads = [threading.Thread(target=request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert not errors and peak[0] == 2


def test_size_below_one_is_refused():
    with pytest.raises(UserInputError, match="llm_instances"):
        BackendPool(FakeBackend, size=0)
