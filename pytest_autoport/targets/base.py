"""What every target provides. Stage logic only ever talks to these two protocols.

A target turns a port into something that runs: an eager module for the component and model
checks, compiled artifacts, and a loaded compiled model that generates through its own
token-generation graph and KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from ..generation import SamplingParams
    from ..spec import PortSpec


@dataclass
class CompileResult:
    """What a compile produced, written into the artifact manifest."""

    graphs: dict[str, str]  # graph name -> file name inside the artifact folder
    seconds_per_graph: dict[str, float] = field(default_factory=dict)
    details: dict = field(default_factory=dict)


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # new tokens per prompt, prompt excluded
    ttft_s: float  # context encoding of the first batch, to the first token
    decode_s: float  # all token-generation steps
    decode_steps: int
    total_s: float
    buckets_used: list[str] = field(default_factory=list)
    sampling: str = "greedy"  # the settings the generator drew with (SamplingParams.describe)


class CompiledModel(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> GenerationResult:
        """Context encoding of each prompt, then one token-generation step per new token."""
        ...

    def score(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """Teacher forcing: logits [len, vocab] of each whole sequence from one context-encoding pass."""
        ...


class Target(Protocol):
    name: str

    def unavailable_reason(self, stage: str | None = None) -> str | None:
        """None when this machine can run the target (``stage`` of it, if named), else why not;
        the stage then skips with that reason."""
        ...

    def versions(self) -> dict[str, str]:
        """Versions that change compiled artifacts; they go into the artifact key."""
        ...

    def build_port(self, spec: PortSpec, hf_config, dtype: torch.dtype) -> torch.nn.Module:
        """An eager instance of the port, weights not loaded."""
        ...

    def mapping_view(self, port: torch.nn.Module, hf_state: dict) -> tuple[dict, dict]:
        """(the HF state dict as the port's conversion receives it, the port tensors it must fill)."""
        ...

    def load_converted(self, port: torch.nn.Module, converted: dict) -> None:
        """Load the converted weights into the eager port (a no-op where the target loads them itself)."""
        ...

    def run_model(self, port: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """Eager full forward from position 0 (fresh KV cache): logits of shape [batch, seq, vocab]."""
        ...

    def run_component(self, module: torch.nn.Module, kind: str, inputs: dict) -> torch.Tensor:
        """Call one port submodule. ``kind`` is ``Component.call_kind`` (input_ids, hidden_positions, hidden;
        encoder-decoder: hidden_encoder, hidden_positions_encoder); ``inputs`` holds ``hidden_states``
        [b, s, h], ``position_ids`` [b, s] and ``input_ids`` (encoder-decoder: ``encoder_hidden_states``)."""
        ...

    def run_seq2seq(
        self, port: torch.nn.Module, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor
    ) -> torch.Tensor:
        """Encoder-decoder: eager ``encode`` then the decoder from position 0 (fresh caches): decoder
        logits of shape [batch, decoder seq, vocab]. Only targets that support encoder-decoder ports."""
        ...

    def compile(self, port: torch.nn.Module, spec: PortSpec, out_dir: Path) -> CompileResult:
        """Compile every bucket's graph into ``out_dir`` (an empty folder)."""
        ...

    def load_compiled(self, spec: PortSpec, out_dir: Path, result: CompileResult) -> CompiledModel: ...
