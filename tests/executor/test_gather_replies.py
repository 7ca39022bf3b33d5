"""executor.base.gather_replies, the loop both multi-rank executors gather their ranks'
answers with, on scripted replies: rank order, which failure is reported, and when."""

from __future__ import annotations

import pytest

from llmcore.executor.base import RankReply, WorkerFailure, gather_replies


class _Script:
    """next_replies() from a list of batches; records each call's (waiting, block)."""

    def __init__(self, batches: list):
        self.batches = list(batches)
        self.calls: list = []

    def __call__(self, waiting: set, block: bool):
        self.calls.append((sorted(waiting), block))
        batch = self.batches.pop(0) if self.batches else []
        for reply in batch:
            assert reply.rank in waiting   # the live view: taken ranks have left it
            yield reply


def _fail(message: str):
    raise WorkerFailure(message)


def _ok(rank):
    return RankReply(rank, f"v{rank}")


def _err(rank, fatal=False):
    return RankReply(rank, error=f"rank {rank} bad", fatal=fatal)


@pytest.mark.parametrize("fail_fast", [False, True])
def test_answers_in_rank_order_whatever_order_they_come(fail_fast):
    script = _Script([[_ok(2)], [_ok(0), _ok(1)]])
    assert gather_replies([0, 1, 2], script, _fail, fail_fast) == ["v0", "v1", "v2"]
    assert script.calls == [([0, 1, 2], True), ([0, 1], True)]
    assert gather_replies([3], _Script([[_ok(3)]]), _fail, fail_fast) == ["v3"]


def test_without_fail_fast_every_rank_answers_then_the_lowest_failure_is_reported():
    script = _Script([[_err(2)], [_ok(1)], [_err(0)]])
    with pytest.raises(WorkerFailure, match="rank 0 bad"):
        gather_replies([0, 1, 2], script, _fail, fail_fast=False)
    assert [block for _, block in script.calls] == [True, True, True]


def test_a_fatal_reply_fails_at_once():
    script = _Script([[_err(0), _err(2, fatal=True), _ok(1)]])
    with pytest.raises(WorkerFailure, match="rank 2 bad"):
        gather_replies([0, 1, 2], script, _fail, fail_fast=False)
    assert len(script.calls) == 1


def test_fail_fast_takes_only_the_answers_already_there():
    # rank 2 fails; a poll finds rank 0's failure too; rank 1 is never waited for
    script = _Script([[_err(2)], [_err(0)], []])
    with pytest.raises(WorkerFailure, match="rank 0 bad"):
        gather_replies([0, 1, 2], script, _fail, fail_fast=True)
    assert script.calls == [([0, 1, 2], True), ([0, 1], False), ([1], False)]
