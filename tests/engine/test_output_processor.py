"""OutputProcessor: logprob entries carry decoded_token == tokenizer.decode([id])."""

from llmcore.engine.output_processor import OutputProcessor


def test_decoded_tokens_match_tokenizer(hf_gguf_tokenizer):
    tok = hf_gguf_tokenizer
    proc = OutputProcessor(tok, eos_token_id=2, max_model_len=128)
    assert proc._decode_one is not None
    ids = tok.encode("naïve café 世界 🎉 Hello", add_special_tokens=False)
    ids += [0, 1, 2] + list(range(100, 140))  # special ids and plain ones
    for i, tid in enumerate(ids):
        top = (ids[i:i + 3], [-1.0, -2.0, -3.0][:len(ids[i:i + 3])], 2)
        d = proc._logprob_dict(tid, -0.5, top, 3)
        for t, lp in d.items():
            assert lp.decoded_token == tok.decode([t]), t
