from llmcore.worker.worker import Worker

__all__ = ["Worker"]
