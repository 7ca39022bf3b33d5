"""llmcore: an LLM inference and serving engine.

    from llmcore import LLM, SamplingParams
    llm = LLM()  # SmolLM2-135M-Instruct by default
    print(llm.generate(["The capital of France is"], SamplingParams(max_tokens=16))[0].outputs[0].text)
"""

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "GuidedDecodingParams", "RequestOutput", "CompletionOutput", "EngineArgs", "LLMEngine",
           "AsyncLLMEngine", "PoolingParams", "PoolingRequestOutput", "EmbeddingRequestOutput"]


def __getattr__(name):
    # Lazy: `import llmcore` stays cheap (no torch) until the engine is used.
    if name == "LLM":
        from llmcore.entrypoints.llm import LLM
        return LLM
    if name in ("SamplingParams", "GuidedDecodingParams"):
        from llmcore import sampling_params
        return getattr(sampling_params, name)
    if name in ("RequestOutput", "CompletionOutput"):
        from llmcore import outputs
        return getattr(outputs, name)
    if name == "PoolingParams":
        from llmcore.pooling_params import PoolingParams
        return PoolingParams
    if name in ("PoolingRequestOutput", "EmbeddingRequestOutput"):
        from llmcore import pooling_outputs
        return getattr(pooling_outputs, name)
    if name == "EngineArgs":
        from llmcore.config import EngineArgs
        return EngineArgs
    if name == "LLMEngine":
        from llmcore.engine.llm_engine import LLMEngine
        return LLMEngine
    if name == "AsyncLLMEngine":
        from llmcore.engine.async_engine import AsyncLLMEngine
        return AsyncLLMEngine
    raise AttributeError(name)
