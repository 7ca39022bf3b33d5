"""Write a synthetic tokenizer with a given vocabulary size, for serving benchmarks of dummy
models whose real tokenizer is not available offline (e.g. the Llama-3-8B shape, 128256 ids).

Token i is the word "t<i>"; words are split on whitespace and joined with spaces, so any id
sequence decodes to text that encodes back to the same ids, and every generated token is one
visible streamed piece. Id 0 is <unk>, 1 <s> (BOS), 2 </s> (EOS).

    python benchmarks/synthetic_tokenizer.py --vocab-size 128256 --out /tmp/tok
    llmcore-server --model benchmarks/configs/llama3-8b --load-format dummy --tokenizer /tmp/tok
"""

from __future__ import annotations

import argparse
import json
import os


def write_tokenizer(vocab_size: int, out: str) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    special = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(special)}
    vocab.update({f"t{i}": i for i in range(len(special), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>",
                   "bos_token": "<s>", "eos_token": "</s>", "model_max_length": 1 << 20,
                   "clean_up_tokenization_spaces": False}, f)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    print(write_tokenizer(a.vocab_size, a.out))


if __name__ == "__main__":
    main()
