from llmcore.distributed.group import TorchDistributedGroup
from llmcore.distributed.init import (check_visible_devices, default_backend, free_tcp_init_method,
                                      init_distributed)

__all__ = ["TorchDistributedGroup", "check_visible_devices", "default_backend",
           "free_tcp_init_method", "init_distributed"]
