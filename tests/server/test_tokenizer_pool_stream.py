"""--tokenizer-pool-size > 0: a 100k-character chat prompt is rendered and tokenized off the
server's event loop, so a concurrent stream keeps receiving tokens meanwhile.

Measured by the order of events, not by time: the long prompt's tokenization is held (in
the pool's thread) until the short stream has received 5 more tokens. Tokenized in the
event loop, the hold would stop the loop and with it the short stream: the hold would run
into its 60 s limit and the test fail."""

from __future__ import annotations

import json
import threading

import httpx

from fake_engine import ByteTokenizer, FakeEngine
from llmcore.tokenizer.pool import ThreadTokenizerPool

LONG_CHARS = 100_000
TOKENS_DURING_HOLD = 5


class _HeldTokenizer(ByteTokenizer):
    """Holds the tokenization of long texts until `release` is set; logs events in order."""

    def __init__(self):
        self.release = threading.Event()
        self.events: list = []
        self.lock = threading.Lock()

    def log(self, *event) -> None:
        with self.lock:
            self.events.append(event)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if len(text) >= LONG_CHARS:
            self.log("long_start")
            released = self.release.wait(timeout=60)
            self.log("long_end", released)
        return super().encode(text, add_special_tokens)


def test_long_prompt_tokenization_does_not_stall_a_stream(fake_server):
    engine = FakeEngine(max_model_len=4 * LONG_CHARS, step_delay=0.005)
    tok = _HeldTokenizer()
    engine.tokenizer = tok
    engine.tokenizer_pool = ThreadTokenizerPool(tok, 1)
    streaming = threading.Event()
    short_done = []

    def short_stream(url: str) -> None:
        seen_during_hold = 0
        with httpx.stream("POST", url + "/v1/completions", timeout=120,
                          json={"prompt": "hi", "max_tokens": 2000, "stream": True}) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                if json.loads(line[6:])["choices"][0]["text"]:
                    tok.log("short_token")
                    streaming.set()
                    with tok.lock:
                        holding = ("long_start",) in tok.events and not any(
                            e[0] == "long_end" for e in tok.events)
                    if holding:
                        seen_during_hold += 1
                        if seen_during_hold == TOKENS_DURING_HOLD:
                            tok.release.set()
                    if tok.release.is_set() and any(e[0] == "long_end" for e in tok.events):
                        break  # enough: closing the stream aborts the request
        short_done.append(True)

    try:
        with fake_server(engine) as srv:
            t = threading.Thread(target=short_stream, args=(srv.url,))
            t.start()
            assert streaming.wait(timeout=60)
            long_text = ("lorem ipsum dolor sit amet " * (LONG_CHARS // 27 + 1))[:LONG_CHARS]
            r = httpx.post(srv.url + "/v1/chat/completions", timeout=120,
                           json={"messages": [{"role": "user", "content": long_text}],
                                 "max_tokens": 2})
            t.join(timeout=120)
    finally:
        tok.release.set()
        engine.tokenizer_pool.shutdown()
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] > LONG_CHARS
    assert short_done == [True]
    names = [e[0] for e in tok.events]
    start, end = names.index("long_start"), names.index("long_end")
    assert tok.events[end] == ("long_end", True), "the event loop stalled during tokenization"
    assert names[start:end].count("short_token") >= TOKENS_DURING_HOLD
