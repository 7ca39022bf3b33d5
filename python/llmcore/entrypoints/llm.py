"""The offline API: `LLM(model=...).generate(prompts, SamplingParams(...))`, as in vLLM."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Optional, Sequence, Union

from tqdm.auto import tqdm

from llmcore.beam_search_params import BeamSearchOutput, BeamSearchParams, BeamSearchSequence
from llmcore.config import EngineArgs
from llmcore.engine.llm_engine import LLMEngine
from llmcore.outputs import RequestOutput
from llmcore.pooling_outputs import EmbeddingRequestOutput, PoolingRequestOutput
from llmcore.pooling_params import PoolingParams
from llmcore.sampling_params import SamplingParams


class LLM:
    """An engine for offline batched generation.

    Accepts every engine argument of `EngineArgs` by name (the same names as the CLI
    flags); unknown names raise TypeError.
    """

    def __init__(self, model: Optional[str] = None, **kwargs):
        names = set(EngineArgs.field_names())
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"LLM() got unknown engine arguments: {', '.join(unknown)}")
        if model is not None:
            kwargs["model"] = model
        self.engine_args = EngineArgs(**kwargs)
        self.llm_engine = LLMEngine(self.engine_args)
        self._counter = itertools.count()

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams() with the model's generation-config defaults (temperature, top_p,
        top_k, min_p, repetition_penalty, max_tokens): what generate/chat use when given no
        sampling_params (as vLLM; --generation-config vllm gives plain SamplingParams())."""
        return SamplingParams(**self.llm_engine.model_config.sampling_defaults)

    def generate(self, prompts=None, sampling_params: Union[SamplingParams, Sequence[SamplingParams],
                                                           None] = None,
                 use_tqdm: bool = True, prompt_token_ids: Optional[list] = None) -> list[RequestOutput]:
        """Generate for one prompt or a list of prompts (str, token-id lists or dicts).

        All prompts are validated before any is queued, so a bad one raises ValueError
        and leaves the engine untouched.
        """
        if prompts is None and prompt_token_ids is not None:
            prompts = [{"prompt_token_ids": ids} for ids in prompt_token_ids]
        if prompts is None:
            raise ValueError("prompts: nothing to generate")
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts
                                                 and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        if isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"sampling_params: {len(params)} given for {len(prompts)} prompts")
        return self._run(prompts, params, use_tqdm)

    def beam_search(self, prompts, params: BeamSearchParams,
                    use_tqdm: bool = False) -> list[BeamSearchOutput]:
        """vLLM's beam search API: the `beam_width` best hypotheses of each prompt. The
        same driver as `generate` with `use_beam_search` (the engine's beam driver)."""
        if not isinstance(params, BeamSearchParams):
            raise ValueError(f"params: expected BeamSearchParams, got {type(params).__name__}")
        sp = params.to_sampling_params()
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts
                                                 and isinstance(prompts[0], int)):
            prompts = [prompts]
        outs = self._run(list(prompts), [sp] * len(prompts), use_tqdm)
        return [BeamSearchOutput(sequences=[
            BeamSearchSequence(tokens=list(o.prompt_token_ids) + list(c.token_ids),
                               cum_logprob=c.cumulative_logprob, text=c.text,
                               finish_reason=c.finish_reason, stop_reason=c.stop_reason)
            for c in o.outputs]) for o in outs]

    def chat(self, messages, sampling_params=None, use_tqdm: bool = True,
             chat_template: Optional[str] = None, add_generation_prompt: bool = True,
             continue_final_message: bool = False,
             tools: Optional[list[dict]] = None) -> list[RequestOutput]:
        """Generate replies for one conversation (list of messages) or a list of them.
        tools: OpenAI-style tool definitions, given to the chat template as `tools`."""
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        tok = self.get_tokenizer()
        if tok is None:
            raise ValueError("chat needs a tokenizer (skip_tokenizer_init is set)")
        prompts = []
        for conv in conversations:
            ids = tok.apply_chat_template(conv, chat_template=chat_template, tokenize=True,
                                          add_generation_prompt=add_generation_prompt and
                                          not continue_final_message,
                                          continue_final_message=continue_final_message,
                                          tools=tools)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            prompts.append({"prompt_token_ids": list(ids)})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def encode(self, prompts, pooling_params: Union[PoolingParams, Sequence[PoolingParams],
                                                    None] = None,
               use_tqdm: bool = True) -> list[PoolingRequestOutput]:
        """Pool each prompt (str, token-id list or dict, or a list of them) into one vector
        (`.outputs.data`); needs an embedding model (task="embed")."""
        prompts = _as_prompt_list(prompts)
        if pooling_params is None:
            pooling_params = PoolingParams()
        if isinstance(pooling_params, PoolingParams):
            params = [pooling_params] * len(prompts)
        else:
            params = list(pooling_params)
            if len(params) != len(prompts):
                raise ValueError(f"pooling_params: {len(params)} given for {len(prompts)} prompts")
        return self._run(prompts, params, use_tqdm)

    def embed(self, prompts, pooling_params: Union[PoolingParams, Sequence[PoolingParams],
                                                   None] = None,
              use_tqdm: bool = True) -> list[EmbeddingRequestOutput]:
        """Embeddings of the prompts (`.outputs.embedding`, a list of floats), pooled as the
        model's pooler config says (default: last token, L2-normalised)."""
        return [EmbeddingRequestOutput.from_base(o)
                for o in self.encode(prompts, pooling_params, use_tqdm)]

    def _run(self, prompts: list, params: list, use_tqdm: bool) -> list:
        engine = self.llm_engine
        reqs = []
        for prompt, p in zip(prompts, params):
            req = engine.make_request(str(next(self._counter)), prompt, p)
            req.stream_outputs = False
            reqs.append(req)
        order = {r.request_id: i for i, r in enumerate(reqs)}
        try:
            for r in reqs:
                engine.add_processed_request(r)
        except Exception:
            engine.abort_request([r.request_id for r in reqs])
            raise
        results: list = [None] * len(reqs)
        bar = tqdm(total=len(reqs), desc="Processed prompts", disable=not use_tqdm, dynamic_ncols=True)
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished and out.request_id in order:
                        results[order[out.request_id]] = out
                        bar.update(1)
                for rid, msg in engine.take_refused():
                    if rid in order:   # e.g. its grammar did not compile
                        raise ValueError(f"request {rid}: {msg}")
        except BaseException:
            engine.abort_request([r.request_id for r in reqs])
            raise
        finally:
            bar.close()
        return results


def _as_prompt_list(prompts) -> list:
    """One prompt (str, dict, token-id list) or a list of them, as a list."""
    if prompts is None:
        raise ValueError("prompts: nothing to embed")
    if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts
                                             and isinstance(prompts[0], int)):
        return [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: nothing to embed")
    return prompts


def engine_args_from_dict(d: dict) -> EngineArgs:
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    return EngineArgs(**{k: v for k, v in d.items() if k in fields})
