"""A Python client of llmcore's gRPC API (proto/llmcore/v1/llmcore.proto).

Start a server first, either beside HTTP or alone:

    llmcore-server --grpc-port 50051                      # HTTP on 8000 + gRPC on 50051
    python -m llmcore.entrypoints.grpc.server --grpc-port 50051

then:

    python examples/grpc_client.py --target localhost:50051 --prompt "The capital of France is"

It lists the models, streams a generation (printing text as it arrives), does the same
unary, runs a chat, and round-trips a tokenization. With --api-key (or $LLMCORE_API_KEY)
it sends `authorization: Bearer <key>`; with --tls-ca it connects over TLS.

The stubs come from the installed llmcore package (`llmcore.entrypoints.grpc._stubs`);
a client without llmcore can generate its own from the .proto with
`python -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. proto/llmcore/v1/llmcore.proto`.
(A Node.js client is in tests/grpc/node/client.js.)
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from llmcore.entrypoints.grpc._stubs import pb2, pb2_grpc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="localhost:50051")
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--api-key", default=os.environ.get("LLMCORE_API_KEY"))
    p.add_argument("--tls-ca", help="CA certificate file: connect with TLS")
    p.add_argument("--timeout", type=float, default=120.0, help="deadline per call, seconds")
    a = p.parse_args(argv)

    metadata = [("authorization", f"Bearer {a.api_key}")] if a.api_key else None
    if a.tls_ca:
        with open(a.tls_ca, "rb") as f:
            channel = grpc.secure_channel(a.target, grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.insecure_channel(a.target)

    with channel:
        stub = pb2_grpc.GenerationStub(channel)
        try:
            models = stub.ListModels(pb2.ListModelsRequest(), metadata=metadata, timeout=a.timeout)
            print("models:", ", ".join(m.id for m in models.models))

            params = pb2.SamplingParams(temperature=a.temperature, max_tokens=a.max_tokens)
            request = pb2.GenerateRequest(text=a.prompt, sampling_params=params)

            # Streaming: each message has the new text; the last one the usage.
            print(f"\n[stream] {a.prompt}", end="", flush=True)
            for msg in stub.Generate(request, metadata=metadata, timeout=a.timeout):
                for chunk in msg.outputs:
                    print(chunk.text, end="", flush=True)
                if msg.finished:
                    reason = pb2.FinishReason.Name(msg.outputs[0].finish_reason) if msg.outputs else "?"
                    print(f"\n  ({reason}, {msg.usage.completion_tokens} tokens)")

            # Unary: the whole output at once.
            resp = stub.GenerateUnary(request, metadata=metadata, timeout=a.timeout)
            print(f"[unary]  {a.prompt}{resp.outputs[0].text}")

            # Chat: the server applies the model's chat template.
            chat = pb2.ChatRequest(messages=[pb2.ChatMessage(role="user", content="What is 2+2?")],
                                   sampling_params=params)
            reply = "".join(c.text for m in stub.Chat(chat, metadata=metadata, timeout=a.timeout)
                            for c in m.outputs)
            print(f"[chat]   {reply}")

            tok = stub.Tokenize(pb2.TokenizeRequest(text=a.prompt), metadata=metadata,
                                timeout=a.timeout)
            back = stub.Detokenize(pb2.DetokenizeRequest(token_ids=tok.token_ids), metadata=metadata,
                                   timeout=a.timeout)
            print(f"[tokens] {tok.count} tokens {list(tok.token_ids)} -> {back.text!r}")
        except grpc.RpcError as e:
            print(f"\nRPC failed: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
