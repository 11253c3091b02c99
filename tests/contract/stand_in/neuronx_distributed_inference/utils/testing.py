"""Stand-in for ``neuronx_distributed_inference.utils.testing`` (contract tests only).

``build_module`` checks its inputs as the real one does, then rebuilds ``module_cls(**module_init_kwargs)``
with the checkpoint's weights; the result runs eagerly (nothing is compiled).
"""

import os

import _standin_log
import torch


def init_cpu_env():
    _standin_log.record("init_cpu_env")
    os.environ["NXD_CPU_MODE"] = "1"


def destroy_cpu_env():
    _standin_log.record("destroy_cpu_env")
    os.environ["NXD_CPU_MODE"] = "0"


def build_module(
    module_cls,
    example_inputs,
    module_init_kwargs={},  # noqa: B006  (the real signature)
    tp_degree=1,
    world_size=None,
    local_ranks_size=None,
    compiler_args=None,
    compiler_workdir=None,
    checkpoint_path=None,
    priority_model_idx=0,
    logical_nc_config=1,
    dry_run=False,
    checkpoint_loader_fn=torch.load,
):
    _standin_log.record(
        "build_module",
        module_cls=module_cls,
        example_inputs=example_inputs,
        module_init_kwargs=module_init_kwargs,
        tp_degree=tp_degree,
        compiler_workdir=compiler_workdir,
        checkpoint_path=checkpoint_path,
    )
    ok = isinstance(example_inputs, list) and all(
        isinstance(t, tuple) and all(isinstance(x, torch.Tensor) for x in t) for t in example_inputs
    )
    if not ok:
        raise ValueError("example_inputs must be a list of tensor tuples")
    if len(example_inputs) != 1:
        raise ValueError("example_inputs must contain exactly one input")
    module = module_cls(**module_init_kwargs)
    module.load_state_dict(checkpoint_loader_fn(checkpoint_path))
    return module.eval()
