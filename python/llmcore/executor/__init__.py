from llmcore.executor.base import Executor
from llmcore.executor.uniproc import UniProcExecutor

__all__ = ["Executor", "UniProcExecutor"]
