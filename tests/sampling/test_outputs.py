from llmcore.outputs import (CompletionOutput, Logprob, RequestMetrics, RequestOutput,
                             make_position_logprobs)


def test_outputs_basic():
    c = CompletionOutput(0, "hi", [1, 2], -1.5, None)
    assert not c.finished() and c.stop_reason is None
    c.finish_reason = "stop"
    assert c.finished()
    r = RequestOutput("r1", "p", [5], None, [c], True, RequestMetrics(arrival_time=1.0))
    assert r.finished and r.outputs[0].text == "hi" and r.num_cached_tokens is None
    assert "r1" in repr(r)


def test_position_logprobs_includes_sampled():
    d = make_position_logprobs(42, -5.0, 17, [1, 2, 3], [-0.1, -0.2, -0.3], 2)
    assert list(d) == [42, 1, 2]
    assert d[42] == Logprob(-5.0, 17) and d[1].rank == 1 and d[2].rank == 2
    d = make_position_logprobs(1, -0.1, 1, [1, 2, 3], [-0.1, -0.2, -0.3], 2)
    assert list(d) == [1, 2] and d[1].rank == 1
    assert make_position_logprobs(9, -1.0, 3) == {9: Logprob(-1.0, 3)}
