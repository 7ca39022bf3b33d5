"""gRPC front end: the llmcore.v1.Generation service (proto/llmcore/v1/llmcore.proto).

`serve_grpc(engine, args, api_key)` in `.server` starts it on an EngineClient;
`python -m llmcore.entrypoints.grpc.server` runs it standalone. The generated modules
are reached through `._stubs` (`pb2`, `pb2_grpc`).
"""
