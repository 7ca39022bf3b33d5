from llmcore.executor.base import Executor
from llmcore.executor.multiproc import MultiprocExecutor, WorkerFailure
from llmcore.executor.uniproc import UniProcExecutor

__all__ = ["Executor", "MultiprocExecutor", "UniProcExecutor", "WorkerFailure"]
