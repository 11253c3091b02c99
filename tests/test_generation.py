"""Generation (issue 4): buckets, padding, sampling, EOS, degeneracy, speed gates."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest
import torch

from pytest_autoport.degeneracy import find_degeneracy
from pytest_autoport.errors import StageFailure
from pytest_autoport.generation import SamplingParams, choose_next, generate
from tests.helpers import fake_static_graphs
from tests.test_decode_parity import ROPE_IGNORES_DECODE_POSITIONS

VOCAB = 11


class CountingModel:
    """A fake compiled model: the next token is (last input token + 1) mod VOCAB; records calls."""

    def __init__(self):
        self.calls = []

    def graph(self, name):
        def run(input_ids, position_ids):
            self.calls.append((name, tuple(input_ids.shape), position_ids[:, -1].tolist()))
            logits = torch.zeros(*input_ids.shape, VOCAB)
            logits.scatter_(-1, ((input_ids + 1) % VOCAB)[..., None], 1.0)
            return logits

        return run


def run_generation(prompts, params, batch_size=1):
    model = CountingModel()
    result = generate(prompts, params, fake_static_graphs(model.graph, batch_size=batch_size))
    return result, model.calls


def test_prompt_padded_to_smallest_bucket_and_decode_crosses_bucket_boundary():
    result, calls = run_generation([[1, 2, 3]], SamplingParams(max_new_tokens=10))
    assert result.tokens == [[4, 5, 6, 7, 8, 9, 10, 0, 1, 2]]
    assert calls[0][:2] == ("ctx4", (1, 4))
    decode_graphs = [name for name, _, _ in calls[1:]]
    assert decode_graphs[:5] == ["tkg8"] * 5 and set(decode_graphs[5:]) == {"tkg16"}
    assert result.buckets_used == ["context_encoding_4", "token_generation_16", "token_generation_8"]


def test_batches_fill_the_static_batch_and_keep_per_row_positions():
    result, calls = run_generation(
        [[1], [1, 2, 3, 4, 5], [7]], SamplingParams(max_new_tokens=2), batch_size=2
    )
    assert result.tokens == [[2, 3], [6, 7], [8, 9]]
    assert calls[0][:2] == ("ctx8", (2, 8))
    assert calls[1][2] == [1, 5]  # decode positions follow each row's own length


def test_stop_at_eos_and_too_long_prompt():
    result, _ = run_generation([[1]], SamplingParams(max_new_tokens=8, eos_token_id=4))
    assert result.tokens == [[2, 3, 4]]
    with pytest.raises(StageFailure, match="exceeds port.max_seq_len"):
        run_generation([[1] * 8], SamplingParams(max_new_tokens=9))
    with pytest.raises(StageFailure, match="does not fit the largest context bucket"):
        run_generation([[1] * 9], SamplingParams(max_new_tokens=2))


def test_choose_next_greedy_suppression_and_seeded_sampling():
    logits = torch.tensor([[0.0, 3.0, 2.9, 1.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    assert choose_next(logits, SamplingParams(1), g).item() == 1
    assert choose_next(logits, SamplingParams(1, suppress_token_ids=(1,)), g).item() == 2
    assert choose_next(logits, SamplingParams(1, temperature=1.0, top_k=1), g).item() == 1

    def samples(seed):
        g.manual_seed(seed)
        params = SamplingParams(1, temperature=2.0, top_p=0.9)
        return [choose_next(logits, params, g).item() for _ in range(50)]

    assert samples(3) == samples(3)
    assert set(samples(3)) == {0, 1, 2, 3}  # top_p 0.9 drops only the least likely token


def test_sampled_generation_follows_its_seed_and_reports_it():
    prompts = [[1, 2, 3], [5]]

    def run(**sampling):
        return run_generation(prompts, SamplingParams(max_new_tokens=10, **sampling))[0]

    greedy = run()
    first, again, other = (run(temperature=2.0, seed=seed) for seed in (7, 7, 8))
    assert first.tokens == again.tokens  # the seed fixes the draw
    assert first.tokens != other.tokens  # another seed draws otherwise
    assert first.tokens != greedy.tokens  # and the draw is not the greedy choice
    assert first.sampling == "T=2.0 top_k=0 top_p=1.0 seed=7" and other.sampling.endswith("seed=8")
    assert greedy.sampling == "greedy"


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ([], "empty output"),
        ([5] * 9, "token 5 repeated 9 times in a row (limit 8)"),
        ([1, 2] * 5, "2-gram [1, 2] repeated 5 times in a row (limit 4)"),
        ([1, 2, 3, 4, 5, 6, 1, 2, 3], None),
    ],
)
def test_degeneracy(tokens, expected):
    assert find_degeneracy(tokens, max_token_run=8, max_ngram_repeats=4) == expected


def test_generate_stage_reports_metrics_and_buckets(llama_verdict):
    figures = llama_verdict.stage("generate")["figures"]
    assert figures["ttft_s"] > 0 and figures["decode_tokens_per_s"] > 0 and figures["e2e_s"] > 0
    # prompts of ~10 tokens + 24 new ones cross from the 32-slot to the 64-slot token-generation graph
    assert {"token_generation_32", "token_generation_64"} <= set(figures["buckets_used"].split(","))


def test_degenerate_output_fails_generate_with_the_text(port_project):
    port_project.replace(
        "blocks/decoder.py",
        "return self.lm_head(self.model(input_ids, position_ids, cache_len)).float()",
        "logits = self.lm_head(self.model(input_ids, position_ids, cache_len)).float()\n"
        "        return logits + 1000.0 * (torch.arange(logits.shape[-1]) == 40) * (input_ids.shape[1] == 1)",
    )
    port_project.run("-k", "model or compile or generate", "--autoport-dtype=float32")
    assert port_project.statuses()["model"] == "passed"
    generate_stage = port_project.stage("generate")
    assert generate_stage["status"] == "failed"
    assert "degenerate output (token 40 repeated" in generate_stage["message"]
    assert "prompt 0:" in generate_stage["message"] and "'" in generate_stage["message"]


def test_speed_gate_and_seeded_sampling_from_the_spec(port_project):
    port_project.edit_spec("[[components]]", "[generation]\nmin_tokens_per_s = 1e9\n\n[[components]]")
    port_project.run("-k", "generate")
    greedy = port_project.stage("generate")
    assert "is below generation.min_tokens_per_s" in greedy["message"]
    assert greedy["figures"]["sampling"] == "greedy"

    port_project.edit_spec("min_tokens_per_s = 1e9", "temperature = 0.9\ntop_k = 20\ntop_p = 0.95\nseed = 7")
    port_project.run("-k", "generate")
    first = port_project.stage("generate")
    port_project.run("-k", "generate")
    second = port_project.stage("generate")
    assert first["status"] == second["status"] == "passed"
    assert first["figures"]["texts"] == second["figures"]["texts"]
    assert first["figures"]["texts"] != greedy["figures"]["texts"]  # the settings reached the sampler
    assert first["figures"]["sampling"] == "T=0.9 top_k=20 top_p=0.95 seed=7"


def test_junit_xml_carries_stage_figures(llama_verdict):  # run with --junitxml=report.xml
    testcase = ElementTree.parse(llama_verdict.root / "report.xml").find(".//testcase[@name='generate']")
    properties = {p.get("name"): p.get("value") for p in testcase.iter("property")}
    figures = llama_verdict.stage("generate")["figures"]
    assert {"autoport.ttft_s", "autoport.decode_tokens_per_s", "autoport.texts"} <= set(properties)
    # each figure travels with the value the results JSON holds
    assert {k: v for k, v in properties.items() if k.startswith("autoport.")} == {
        f"autoport.{key}": str(value) for key, value in figures.items()
    }
    assert properties["autoport-stage"] == "generate"


def test_degenerate_output_that_hf_shares_is_a_warning_and_one_it_does_not_fails(make_project):
    """Output HF's own greedy continuation repeats the same way is the checkpoint's behaviour: generate
    passes and says so; a port whose output degenerates where HF's does not still fails."""
    project = make_project("llama")
    # every 2-gram counts as repeated: HF's greedy output and the port's are both "degenerate"
    project.spec.write_text(project.spec.read_text() + "\n[generation]\nmax_ngram_repeats = 0\n")
    project.run("-k", "generate or golden", "--autoport-dtype=float32")
    generate = project.stage("generate")
    assert generate["status"] == "passed", generate.get("message")
    warning = generate["figures"]["warning"]
    assert warning.count("as HF's own greedy output for it: the checkpoint's behaviour") == 3
    project.replace(*ROPE_IGNORES_DECODE_POSITIONS, what="RoPE ignores positions in token generation")
    project.run("-k", "generate", "--autoport-dtype=float32")
    generate = project.stage("generate")
    assert generate["status"] == "failed"
    assert (
        "degenerate output" in generate["message"] and "HF's greedy output is not this" in generate["message"]
    )
