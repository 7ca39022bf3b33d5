"""POST /v1/embeddings (OpenAI's API), served by an embedding model (--task embed)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Optional

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from llmcore.entrypoints.openai.errors import APIError
from llmcore.entrypoints.openai.protocol import EmbeddingRequest, now
from llmcore.entrypoints.openai.serving_engine import (OpenAIServingBase, ServerConfig,
                                                       chain_first, logger, merge_generators,
                                                       random_id, run_until_disconnect)
from llmcore.pooling_params import PoolingParams

# OpenAI's limit on the inputs of one request
MAX_INPUTS = 2048


class OpenAIServingEmbedding(OpenAIServingBase):
    def __init__(self, engine: Any, config: ServerConfig, lifecycle: Optional[Any] = None):
        super().__init__(engine, config, lifecycle)
        info = engine.model_info
        self.task = getattr(info, "task", "generate")
        self.hidden_size = int(getattr(info, "hidden_size", 0) or 0)

    def _inputs(self, request: EmbeddingRequest) -> list[list[int]]:
        """Token ids of each input (strings tokenized here), checked against the context."""
        x = request.input
        if isinstance(x, str) or (isinstance(x, list) and x and all(isinstance(t, int) for t in x)):
            raw: list = [x]
        else:
            raw = list(x)
        if not raw:
            raise APIError("input is empty.", 400, param="input")
        if len(raw) > MAX_INPUTS:
            raise APIError(f"at most {MAX_INPUTS} inputs per request, got {len(raw)}.", 400,
                           param="input")
        limit = self.config.max_model_len
        out = []
        for i, item in enumerate(raw):
            if isinstance(item, str):
                ids = self.encode(item, add_special_tokens=bool(request.add_special_tokens)) \
                    if item else []
            else:
                ids = list(item)
                self.check_token_ids(ids, param="input")
            if not ids:
                raise APIError(f"input[{i}] is empty.", 400, param="input")
            if len(ids) > limit:
                raise APIError(f"This model's maximum context length is {limit} tokens. However, "
                               f"input[{i}] has {len(ids)} tokens. Please reduce the length of "
                               "the input.", 400, param="input", code="context_length_exceeded")
            out.append(ids)
        return out

    async def create_embedding(self, request: EmbeddingRequest, raw_request: Request) -> Response:
        model_name = self.check_model(request.model)
        if self.task != "embed":
            raise APIError("This model generates text and does not serve embeddings (start the "
                           "server with --task embed for /v1/embeddings).", 400, param="model",
                           code="model_not_supported")
        if request.dimensions is not None and request.dimensions != self.hidden_size:
            raise APIError(f"dimensions: this model's embeddings have {self.hidden_size} "
                           f"dimensions and cannot be shortened (not a matryoshka model); got "
                           f"{request.dimensions}.", 400, param="dimensions")
        inputs = self._inputs(request)
        priority = self.check_priority(request)
        params = PoolingParams()
        request_id = f"embd-{random_id()}"
        rids = [f"{request_id}-{i}" for i in range(len(inputs))]
        prompts = [{"prompt_token_ids": ids} for ids in inputs]
        for rid, prompt in zip(rids, prompts):
            self.log_request(rid, prompt, params, user=request.user, priority=priority)
        results = await asyncio.gather(
            *(self.prime(p, params, rid, priority, encode=True) for p, rid in zip(prompts, rids)),
            return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.abort(*rids)
            raise errors[0]
        disconnected, finals = await run_until_disconnect(
            raw_request, self._collect([chain_first(first, gen) for first, gen in results]))
        if disconnected:
            await self.abort(*rids)
            logger.info("client disconnected: aborted %s", request_id)
            return Response(status_code=499)
        n_tokens = sum(len(ids) for ids in inputs)
        data = [{"object": "embedding", "index": i,
                 "embedding": encode_vector(out.outputs.data, request.encoding_format)}
                for i, out in enumerate(finals)]
        return JSONResponse({"id": request_id, "object": "list", "created": now(),
                             "model": model_name, "data": data,
                             "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})

    async def _collect(self, gens: list) -> list:
        finals: list = [None] * len(gens)
        async for i, out in merge_generators(gens):
            finals[i] = out
        return finals


def encode_vector(data: Any, encoding_format: str) -> Any:
    """A float list, or OpenAI's base64: the little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(data, dtype="<f4").tobytes()).decode("ascii")
    return data.tolist()
