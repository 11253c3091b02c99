"""Everything the stages share within one pytest run, each piece computed once and only when needed.

The HF reference model, the converted port, the reference activations and the compiled artifact
are expensive; stages ask this object for them and never build them twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .errors import AutoportError, StageFailure
from .shared_steps import shared_step
from .spec import PortSpec
from .time_spent import TimeSpent

PROBE_FILL = 128  # tokens the probe fills at most by repeating the prompts (captures stay small)
ANNOUNCED_LOAD_BYTES = 256 * 2**20  # a smaller FP32 reference loads in a blink: not announced
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclass(frozen=True)
class Options:
    artifacts_dir: Path
    target: str | None = None
    dry_run: bool = False
    dtype: str | None = None  # overrides port.dtype
    compiler: str | None = None  # overrides port.compiler
    golden_mode: str = "token"  # token | logit | all
    logit_tolerance: str = "calibrated"  # calibrated | nxdi: the logit check's tolerances in low precision
    regen_golden: bool = False  # rebuild the golden cache entry even when a sound one is on disk
    threads: int | None = None  # torch CPU threads; None: one for a small model (see threads.py)
    golden_streaming: bool = False  # golden references from the HF model streamed one layer at a time
    layers: int | None = None  # --autoport-layers: judge only the first N decoder layers


class AutoportSession:
    def __init__(self, spec: PortSpec, options: Options):
        self.spec = spec.with_overrides(dtype=options.dtype, compiler=options.compiler)
        self.options = options
        self.target_name = options.target or spec.port.target
        self.time_spent = TimeSpent()

    def check_inputs(self) -> None:
        """Spec input that only the model can judge, checked at collection: ``[tiny]`` keys (before a
        tiny checkpoint is trained), prompt lengths against the buckets, component layer indices."""
        from .checkpoint_folder import missing_files, tokenizer_problem
        from .errors import SpecError
        from .spec_checks import check_against_model, check_tiny_keys

        check_tiny_keys(self.spec)
        missing = [m for m in missing_files(self.weights.path) if not m.startswith("tokenizer")]
        if missing:
            raise SpecError(
                self.spec.path, "model.weights_path", f"{self.weights.path} lacks {'; '.join(missing)}"
            )
        # without a tokenizer the prompts cannot be measured: the weights stage names what is missing
        # and every later stage skips, so the lengths are checked only when it loads
        usable = tokenizer_problem(lambda: self.tokenizer) is None
        prompt_ids = self.prompt_ids if usable else [[0] for _ in self.spec.validation.prompts]
        check_against_model(self.spec, prompt_ids, self.full_layers)

    def apply_threads(self) -> None:
        """Set torch's CPU thread count for this run (figures in ``thread_figures``, shown by ``env``)."""
        from .memory_check import parameter_count
        from .threads import apply_threads

        self.thread_figures = apply_threads(self.options.threads, parameter_count(self.weights.path))

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

    def plot_path(self, name: str) -> Path:
        return self.artifacts / "results" / "plots" / f"{self.spec.name}-{name}.png"

    # -- target --------------------------------------------------------------------------------------
    @cached_property
    def target(self):
        from .targets import get_target

        return get_target(self.target_name)

    # -- reference side ------------------------------------------------------------------------------
    @cached_property
    def weights(self):
        from .checkpoint import resolve_weights

        return resolve_weights(self.spec, self.time_spent.step)

    @cached_property
    def full_hf_config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.weights.path)

    @cached_property
    def hf_config(self):
        """The config every stage judges: the checkpoint's, cut to --autoport-layers when given."""
        if self.options.layers is None:
            return self.full_hf_config
        if self.target_name != "torch":
            from .reduced_layers import OPTION

            raise AutoportError(
                f"{OPTION}: reduced-layer mode needs the torch target (got {self.target_name})"
            )
        from .reduced_layers import truncate_config

        return truncate_config(self.full_hf_config, self.options.layers)

    @property
    def full_layers(self) -> int:
        """The checkpoint's decoder layer count (whatever --autoport-layers judges)."""
        return self.full_hf_config.num_hidden_layers

    @property
    def layers_record(self) -> dict | None:
        """Reduced-layer mode, for the results: ``{"judged": N, "total": M}``; None for the full model."""
        if self.options.layers is None:
            return None
        return {"judged": self.hf_config.num_hidden_layers, "total": self.full_layers}

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.weights.path)

    @shared_step("HF model load")
    def hf_model(self):
        """The FP32 HF reference, after checking that it fits in the memory available."""
        from .hf_reference import load_hf_model
        from .memory_check import check_reference_fits

        self.reference_memory = check_reference_fits(self.weights.path, self.later_layer_keys)
        config = self.hf_config if self.options.layers is not None else None
        size = self.reference_memory["weights_bytes"]
        with self.time_spent.step(
            "loading the FP32 HF reference", f"{size / 1e9:.1f} GB", announce=size >= ANNOUNCED_LOAD_BYTES
        ):
            return load_hf_model(
                self.spec.model.hf_model_class, self.weights.path, self.spec.path, config=config
            )

    def later_layer_keys(self, keys: list[str]) -> list[str]:
        """The checkpoint keys --autoport-layers leaves out (none for the full model)."""
        if self.options.layers is None:
            return []
        from .reduced_layers import later_layer_keys, layer_prefixes

        return later_layer_keys(keys, layer_prefixes(self.spec), self.hf_config.num_hidden_layers)

    @shared_step("HF checkpoint read")
    def hf_state_dict(self) -> dict:
        from .checkpoint import load_state_dict
        from .hf_reference import hf_ignored_keys
        from .memory_check import check_checkpoint_read_fits

        check_checkpoint_read_fits(self.weights.path, self.later_layer_keys)
        left_out: list[str] = []
        self.hf_keys_ignored: list[str] = []
        ignored_by_hf = hf_ignored_keys(self.spec.model.hf_model_class)

        def leave_out(keys):
            left_out.extend(self.later_layer_keys(keys))
            self.hf_keys_ignored.extend(k for k in keys if ignored_by_hf(k))
            return left_out + self.hf_keys_ignored

        state = load_state_dict(self.weights.path, leave_out)
        self.layer_keys_left_out = left_out
        return state

    @cached_property
    def prompt_ids(self) -> list[list[int]]:
        return [self.tokenizer(p)["input_ids"] for p in self.spec.validation.prompts]

    @cached_property
    def probe_ids(self):
        """The input of the component and model checks: the prompts joined, repeated until they fill the
        largest context bucket (up to PROBE_FILL tokens), so every cache slot of a small model's buckets is
        written and read; cut to the largest bucket."""
        import torch

        prompts = self.spec.validation.prompts
        ids = self.tokenizer(" ".join(prompts))["input_ids"]
        length = min(self.spec.port.context_bucket_list[-1], max(len(ids), PROBE_FILL))
        if ids and len(ids) < length:
            ids = self.tokenizer(" ".join(prompts * (length // len(ids) + 1)))["input_ids"]
        return torch.tensor([ids[:length]])

    @property
    def is_encoder_decoder(self) -> bool:
        return self.spec.port.is_encoder_decoder

    @cached_property
    def decoder_probe_ids(self):
        """Encoder-decoder: the decoder input of the component and model checks, the decoder start
        token then the probe (cut to max_seq_len)."""
        import torch

        start = getattr(self.hf_config, "decoder_start_token_id", None)
        if start is None:
            raise AutoportError(
                f"{self.spec.path}: an encoder-decoder HF config needs decoder_start_token_id"
            )
        ids = [start] + self.probe_ids[0].tolist()
        return torch.tensor([ids[: self.spec.port.max_seq_len]])

    def _hf_forward(self, model, result: dict):
        """One reference forward over the probe; fills ``result`` with logits (and encoder output)."""
        if not self.is_encoder_decoder:
            result["logits"] = model(self.probe_ids, use_cache=False).logits.float()
            return
        out = model(input_ids=self.probe_ids, decoder_input_ids=self.decoder_probe_ids, use_cache=False)
        result["logits"] = out.logits.float()
        result["encoder_hidden"] = out.encoder_last_hidden_state

    @property
    def hf_encoder_hidden(self):
        """Encoder-decoder: the FP32 reference encoder output over the probe (cross-attention input)."""
        self.hf_trace  # noqa: B018 - computed with the trace
        return self._hf_encoder_hidden

    def run_port_model(self, port):
        """Eager full forward of the port over the probe: logits [batch, seq, vocab]."""
        with self.own_modules_only(port):
            if self.is_encoder_decoder:
                if not hasattr(self.target, "run_seq2seq"):
                    raise StageFailure(f"target {self.target_name!r} does not run encoder-decoder ports")
                return self.target.run_seq2seq(port, self.probe_ids, self.decoder_probe_ids)
            return self.target.run_model(port, self.probe_ids)

    def own_modules_only(self, port):
        """A block in which ``port`` must run only its own modules (see ``delegation``). NxDI drives
        the port through wrapper modules of its own, so there only transformers models are flagged."""
        from .delegation import own_modules_only

        return own_modules_only(port, foreign_weights=self.target_name == "torch")

    @cached_property
    def hf_skeleton(self):
        """The HF model's module tree without weights (meta device): cheap enough for collection."""
        import torch
        import transformers

        cls = getattr(transformers, self.spec.model.hf_model_class)
        with torch.device("meta"):
            return cls(self.hf_config)

    @cached_property
    def module_paths(self) -> list[tuple[str, str, str, int | None]]:
        """(component name, HF path, port path, layer) for every component of every layer.

        Resolves each component's ``hf_module_aliases`` against the installed transformers (the spec's
        components are replaced by the resolved ones) and leaves out, with a reason in
        ``skipped_components``, a component whose HF module is a container that is never called."""
        from .hf_reference import component_paths

        entries, resolved, self.skipped_components = component_paths(
            self.spec, self.hf_skeleton, self.hf_config.num_hidden_layers
        )
        self.spec = dataclasses.replace(self.spec, components=resolved)
        return entries

    @shared_step("HF reference pass")
    def hf_trace(self):
        """(captures by HF path, logits) of one FP32 reference forward over the probe."""
        from .hf_reference import capture_modules

        model = self.hf_model
        result = {}

        def run():
            self._hf_forward(model, result)

        paths = [hf for _, hf, _, _ in self.module_paths]
        try:
            captures = capture_modules(model, paths, run)
        except AttributeError as exc:
            raise AutoportError(
                f"{self.spec.path}: a components[].hf_module path does not exist: {exc}"
            ) from None
        self._hf_encoder_hidden = result.get("encoder_hidden")
        return captures, result["logits"]

    def streaming_reference(self, dtype):
        """--autoport-golden-streaming: the HF reference in ``dtype`` that holds one decoder layer at a
        time (built once per dtype)."""
        from .streaming_reference import StreamingReference

        built = self.__dict__.setdefault("_streaming_references", {})
        if dtype not in built:
            config = self.hf_config if self.options.layers is not None else None
            built[dtype] = StreamingReference(
                self.spec.model.hf_model_class, self.weights.path, dtype, config=config
            )
        return built[dtype]

    @shared_step("HF low-precision model")
    def hf_model_lp(self):
        from .memory_check import check_copy_fits
        from .memory_plan import cast_copy

        check_copy_fits("the HF low-precision copy", self.hf_model, self.lp_dtype)
        return cast_copy(self.hf_model, self.lp_dtype)

    @shared_step("HF low-precision reference pass")
    def hf_trace_lp(self):
        """The same reference forward pass with the HF model in the low-precision dtype."""
        from .hf_reference import capture_modules

        result = {}

        def run():
            self._hf_forward(self.hf_model_lp, result)

        captures = capture_modules(self.hf_model_lp, [hf for _, hf, _, _ in self.module_paths], run)
        return captures, result["logits"]

    @shared_step("HF golden reference")
    def golden_reference(self):
        """The golden tokens and HF logits the golden stage compares with, from the golden cache
        (computed and stored on a miss; the HF model is not loaded on a hit)."""
        from .golden_cache import golden_reference

        return golden_reference(self, regen=self.options.regen_golden)

    @property
    def golden_tokens(self) -> list[list[int]]:
        return self.golden_reference.tokens

    # -- port side -----------------------------------------------------------------------------------
    @property
    def dtype(self):
        import torch

        return getattr(torch, self.spec.port.dtype)

    @property
    def lp_dtype_name(self) -> str | None:
        """The dtype of the low-precision checks: the port's dtype, or bfloat16 for an FP32 port
        (None when --autoport-dtype=float32 asks for FP32 only)."""
        if self.options.dtype == "float32":
            return None
        return self.spec.port.dtype if self.spec.port.dtype != "float32" else "bfloat16"

    @property
    def lp_dtype(self):
        import torch

        return getattr(torch, self.lp_dtype_name)

    @shared_step("low-precision port")
    def port_lp(self):
        return self._port_copy(self.lp_dtype)

    def _port_copy(self, dtype):
        """The port in ``dtype``: the target builds it where it can (nxdi: NxDI's own low-precision
        load), else a cast copy of the FP32 port."""
        from .memory_check import check_copy_fits
        from .memory_plan import cast_copy

        if hasattr(self.target, "port_in_dtype"):
            return self.target.port_in_dtype(self.spec, self.port, dtype)
        check_copy_fits(f"the port's {dtype} copy".replace("torch.", ""), self.port, dtype)
        return cast_copy(self.port, dtype)

    @shared_step("port build and weight conversion")
    def mapping(self):
        import torch

        from .spec import import_port_class
        from .weight_mapping import check_mapping

        port = self.target.build_port(self.spec, self.hf_config, torch.float32)
        convert = import_port_class(self.spec).convert_hf_to_neuron_state_dict
        if hasattr(self.target, "conversion"):  # the target's loader steps around the port's conversion
            convert = self.target.conversion(port, convert)
        hf_state, port_state = self.target.mapping_view(port, self.hf_state_dict)
        # the torch target loads the port's own state dict: a buffer the port computes may stay as built
        buffers = (
            frozenset(name for name, _ in port.named_buffers())
            if self.target_name == "torch"
            else frozenset()
        )
        return check_mapping(convert, hf_state, port.config, port_state, buffers), port

    @shared_step("converted-weight load")
    def port(self):
        """The eager port with converted weights loaded, in FP32."""

        report, port = self.mapping
        if not report.ok:
            raise StageFailure(report.message())
        self.target.load_converted(port, report.converted)
        return port

    def port_in(self, dtype):
        """The eager port in ``dtype`` (a copy unless FP32); the FP32 port itself is never cast."""
        import torch

        if dtype == torch.float32:
            return self.port
        if self.lp_dtype_name and dtype == self.lp_dtype:
            return self.port_lp
        return self._port_copy(dtype)

    @shared_step("compile")
    def compiled(self):
        from .stages.compile import compile_port

        return compile_port(self)

    @shared_step("compiled-model load")
    def compiled_model(self):
        entry, result = self.compiled
        return self.target.load_compiled(self.spec, entry.path, result)

    @shared_step("generation")
    def generation(self):
        """The ``generate`` stage's run, with the spec's sampling settings."""
        from .generation import spec_sampling

        return self.compiled_model.generate(self.prompt_ids, spec_sampling(self.spec, self.tokenizer))

    @shared_step("greedy run of the compiled port")
    def golden_run(self):
        """The compiled port's greedy continuation, exactly as long as the golden's."""
        from .generation import SamplingParams

        params = SamplingParams(max_new_tokens=self.spec.validation.num_tokens_to_check)
        return self.compiled_model.generate(self.prompt_ids, params)
