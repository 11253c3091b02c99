"""Scoring parity: the teacher-forced logits (prompt + golden continuation in one context-encoding pass)
are judged at every scored position against HF's, so a context-encoding fault that only the longest
bucket meets fails the golden stage even where every greedy token still matches."""

from __future__ import annotations

from tests.test_decode_parity import ATTENTION

# context-encoding graphs read at most 32 cache slots: prompts (16 and 32 buckets) are right, the
# teacher-forced scoring of prompt + continuation (64 bucket) is not
PREFILL_READS_32_SLOTS = (
    ATTENTION,
    "        end = self.k_cache.shape[2] if cache_len is None else cache_len\n",
    "        end = self.k_cache.shape[2] if cache_len is None else cache_len\n"
    "        if k.shape[2] > 1:\n"
    "            end = min(end, 32)\n",
)


def test_context_encoding_bug_past_the_prompts_fails_scoring_parity(port_project):
    port_project.replace(*PREFILL_READS_32_SLOTS, what="context encoding reads at most 32 cache slots")
    port_project.run("-k", "golden", "--autoport-dtype=float32")
    golden = port_project.stage("golden")
    assert golden["status"] == "failed"
    figures = golden["figures"]
    assert figures["decode_parity"]["passed"]  # token generation reads every slot it should
    scoring = figures["scoring_parity"]
    assert scoring["mode"] == "fp32" and not scoring["passed"]
    first = scoring["first_divergent"]
    assert first["position"] >= 32 and first["graph"] == "context_encoding_64"
    assert first["tokens_scored"] > 32
    assert (
        "teacher-forced logits (prompt + golden continuation scored in one context-encoding pass) differ"
        in (golden["message"])
    )
    assert (
        f"first divergent position: prompt {first['prompt']} new token {first['step']} at position "
        f"{first['position']} ({first['tokens_scored']} tokens scored through context_encoding_64)"
    ) in golden["message"]
    assert golden["message"].endswith("(kb/kv_cache_and_decoding.md)")


def test_correct_port_passes_scoring_parity_at_every_position(port_project):
    port_project.run("-k", "golden", "--autoport-dtype=float32")
    golden = port_project.stage("golden")
    assert golden["status"] == "passed", golden.get("message")
    scoring = golden["figures"]["scoring_parity"]
    assert scoring["passed"] and scoring["divergent_steps"] == 0
    assert scoring["steps"] == golden["figures"]["decode_parity"]["steps"] > 0
    assert scoring["max_step_error"] < 1e-5
