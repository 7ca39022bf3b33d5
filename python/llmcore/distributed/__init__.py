from llmcore.distributed.custom_all_reduce import CustomAllReduce, setup_custom_all_reduce
from llmcore.distributed.group import TorchDistributedGroup
from llmcore.distributed.groups import ParallelGroups, build_parallel_groups, rank_coords
from llmcore.distributed.init import (check_visible_devices, default_backend,
                                      free_tcp_init_method, init_distributed)
from llmcore.distributed.pipeline import (IntermediateTensors, PipelineGroup,
                                          get_pp_layer_range)

__all__ = ["CustomAllReduce", "IntermediateTensors", "ParallelGroups", "PipelineGroup",
           "TorchDistributedGroup", "build_parallel_groups", "check_visible_devices",
           "default_backend", "free_tcp_init_method", "get_pp_layer_range", "init_distributed",
           "rank_coords", "setup_custom_all_reduce"]
