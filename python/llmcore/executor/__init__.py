from llmcore.executor.base import Executor, WorkerFailure
from llmcore.executor.multiproc import MultiprocExecutor
from llmcore.executor.ray_executor import RayExecutor
from llmcore.executor.uniproc import UniProcExecutor

__all__ = ["Executor", "MultiprocExecutor", "RayExecutor", "UniProcExecutor", "WorkerFailure"]
