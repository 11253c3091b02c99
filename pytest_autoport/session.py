"""Everything the stages share within one pytest run, each piece computed once and only when needed.

The HF reference model, the converted port, the reference activations and the compiled artifact
are expensive; stages ask this object for them and never build them twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .errors import AutoportError, StageFailure
from .spec import PortSpec

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclass(frozen=True)
class Options:
    artifacts_dir: Path
    target: str | None = None
    dry_run: bool = False


class AutoportSession:
    def __init__(self, spec: PortSpec, options: Options):
        self.spec = spec
        self.options = options
        self.target_name = options.target or spec.port.target

    # -- locations ---------------------------------------------------------------------------------
    @property
    def artifacts(self) -> Path:
        return self.options.artifacts_dir

    @property
    def compiled_root(self) -> Path:
        return self.artifacts / "data" / "compiled_model"

    @property
    def failures_root(self) -> Path:
        return self.artifacts / "data" / "compilation_failures"

    # -- target --------------------------------------------------------------------------------------
    @cached_property
    def target(self):
        from .targets import get_target

        return get_target(self.target_name)

    # -- reference side ------------------------------------------------------------------------------
    @cached_property
    def weights(self):
        from .checkpoint import resolve_weights

        return resolve_weights(self.spec)

    @cached_property
    def hf_config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.weights.path)

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.weights.path)

    @cached_property
    def hf_model(self):
        from .hf_reference import load_hf_model

        return load_hf_model(self.spec.model.hf_model_class, self.weights.path, self.spec.path)

    @cached_property
    def hf_state_dict(self) -> dict:
        from .checkpoint import load_state_dict

        return load_state_dict(self.weights.path)

    @cached_property
    def prompt_ids(self) -> list[list[int]]:
        return [self.tokenizer(p)["input_ids"] for p in self.spec.validation.prompts]

    @cached_property
    def probe_ids(self):
        """The input of the component and model checks: the prompts joined, cut to the largest bucket."""
        import torch

        ids = self.tokenizer(" ".join(self.spec.validation.prompts))["input_ids"]
        return torch.tensor([ids[: self.spec.port.context_buckets[-1]]])

    @cached_property
    def module_paths(self) -> list[tuple[str, str, str, int | None]]:
        """(component name, HF path, port path, layer) for every component of every layer."""
        layers = self.hf_config.num_hidden_layers
        entries = []
        for comp in self.spec.components:
            for layer in range(layers) if comp.per_layer else [None]:
                entries.append((comp.name, comp.hf_path(layer), comp.port_path(layer), layer))
        return entries

    @cached_property
    def hf_trace(self):
        """(captures by HF path, logits) of one FP32 reference forward over the probe."""
        from .hf_reference import capture_modules

        model = self.hf_model
        result = {}

        def run():
            result["logits"] = model(self.probe_ids).logits.float()

        paths = [hf for _, hf, _, _ in self.module_paths]
        try:
            captures = capture_modules(model, paths, run)
        except AttributeError as exc:
            raise AutoportError(f"{self.spec.path}: a components[].hf_module path does not exist: {exc}") from None
        return captures, result["logits"]

    @cached_property
    def golden_tokens(self) -> list[list[int]]:
        from .hf_reference import greedy_golden

        return greedy_golden(
            self.hf_model, self.prompt_ids, self.spec.validation.num_tokens_to_check, self.tokenizer.pad_token_id
        )

    # -- port side -----------------------------------------------------------------------------------
    @property
    def dtype(self):
        import torch

        return getattr(torch, self.spec.port.dtype)

    @cached_property
    def mapping(self):
        from .spec import import_port_class
        from .weight_mapping import check_mapping

        port = self.target.build_port(self.spec, self.hf_config, self.dtype)
        convert = import_port_class(self.spec).convert_hf_to_neuron_state_dict
        return check_mapping(convert, self.hf_state_dict, port.config, port.state_dict()), port

    @cached_property
    def port(self):
        """The eager port with converted weights loaded, in FP32."""
        import torch

        report, port = self.mapping
        if not report.ok:
            raise StageFailure(report.message())
        port.load_state_dict(report.converted, strict=True)
        return port.to(torch.float32)

    @cached_property
    def compiled(self):
        from .stages.compile import compile_port

        return compile_port(self)

    @cached_property
    def generation(self):
        entry, result = self.compiled
        model = self.target.load_compiled(self.spec, entry.path, result)
        return model.generate(self.prompt_ids, self.spec.validation.num_tokens_to_check)
