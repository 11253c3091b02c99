"""Imported once by the fork server of ``forked_pytest``: the modules every verdict imports, so that
forked runs start with them loaded. The harness itself is left out (each run imports it afresh, with
that run's environment), and so is anything first imported by a test."""

import sys
from pathlib import Path

import safetensors.torch  # noqa: F401
import tokenizers  # noqa: F401
import torch
import torch.export  # noqa: F401
import transformers

from pytest_autoport.spec import load_spec

REPO = Path(__file__).resolve().parents[1]

for spec_file in sorted((REPO / "port_specs").glob("*.toml")):
    spec = load_spec(spec_file, REPO, check_imports=False)
    getattr(transformers, spec.model.hf_model_class)
    transformers.AutoConfig.for_model(spec.tiny["model_type"])
transformers.PreTrainedTokenizerFast, transformers.AutoTokenizer  # noqa: B018
torch.nn.functional.scaled_dot_product_attention  # noqa: B018

for name in [m for m in sys.modules if m == "pytest_autoport" or m.startswith("pytest_autoport.")]:
    del sys.modules[name]
