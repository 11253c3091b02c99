"""Low-precision verdicts (issue 3): precision bugs are caught by R in bf16 and invisible to FP32
strict; NaN is named where it appears; the golden's teacher-forced and logit modes."""

from __future__ import annotations

from pathlib import Path

NORM = "blocks/norms.py"
LLAMA = "llama/modeling_llama.py"
# the variance accumulated in the input dtype (bf16 in a bf16 model), as a bf16 reduction does on device
VARIANCE_IN_BF16 = (
    NORM,
    "        x = x.float()\n        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)\n",
    "        variance = torch.zeros_like(x[..., :1])\n"
    "        for i in range(x.shape[-1]):\n"
    "            variance = variance + x[..., i : i + 1].pow(2)\n"
    "        x = x.float()\n"
    "        x = x * torch.rsqrt(variance.float() / x.shape[-1] + self.eps)\n",
)


def test_rmsnorm_variance_in_bf16_is_caught_by_ratio_only(port_project):
    port_project.replace(*VARIANCE_IN_BF16)
    port_project.run("-k", "input_norm-layer0 or model")
    statuses = port_project.statuses()
    assert statuses["component[input_norm-layer0]"] == "passed"
    assert statuses["model"] == "passed"
    assert statuses["component[input_norm-layer0-bfloat16]"] == "failed"
    failed = port_project.stage("component[input_norm-layer0-bfloat16]")
    assert "rounding error (band 0.8-1.2)" in failed["message"]
    assert failed["figures"]["r"] > 1.2
    plot = Path(failed["figures"]["plot"])
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"error plot: {plot}" in failed["message"]
    # exact in FP32, off in bf16 only: the norms topic, from the figures (a metric signature)
    assert failed["message"].endswith("(kb/norms.md)") and "off only in low precision" in failed["message"]
    assert failed["figures"]["likely_cause"]["signature"].startswith("stage=component|model kind=norm")


def test_extra_float32_upcast_warns_of_over_precision(port_project):
    port_project.replace(
        LLAMA,
        "return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))",
        "gate, up, down = (m.weight.float() for m in (self.gate_proj, self.up_proj, self.down_proj))\n"
        "        return F.linear(F.silu(F.linear(x.float(), gate)) * F.linear(x.float(), up), down).to(x.dtype)",
    )
    result = port_project.run("-k", "mlp-layer0")
    assert port_project.statuses() == {
        "component[mlp-layer0]": "passed",
        "component[mlp-layer0-bfloat16]": "passed",
    }
    figures = port_project.stage("component[mlp-layer0-bfloat16]")["figures"]
    assert figures["r"] < 0.8
    assert "an extra upcast?" in figures["warning"]
    result.stdout.fnmatch_lines(["*OverPrecisionWarning*more precise than the reference*"])


def test_nan_inside_one_layer_is_reported_in_that_layer(port_project):
    port_project.replace(
        LLAMA,
        "        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))",
        "        out = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))\n"
        "        return out * float('nan') if self.layer_idx == 1 else out",
    )
    port_project.run("-k", "decoder_layer or model")
    statuses = port_project.statuses()
    assert statuses["component[decoder_layer-layer0]"] == "passed"
    assert statuses["component[decoder_layer-layer1]"] == "failed"
    assert "NaN" in port_project.stage("component[decoder_layer-layer1]")["message"]
    cause = port_project.stage("component[decoder_layer-layer1]")["figures"]["likely_cause"]
    assert (
        cause["file"] == "kb/accuracy_debugging.md"
        and cause["signature"] == "stage=component|model nonfinite=yes"
    )
    model = port_project.stage("model")
    assert model["figures"]["first_divergence"] == "model.layers.1"
    rows = {r["module"]: r for r in model["figures"]["localisation"]}
    assert rows["model.layers.0"]["ok"] and not rows["model.layers.1"]["ok"]
    assert rows["model.layers.1"]["nonfinite"].startswith("actual has")
    assert "model.layers.1 " in model["message"] and "NaN/Inf" in model["message"]


def test_bf16_model_failure_localises_with_ratios(port_project):
    port_project.replace(*VARIANCE_IN_BF16)
    port_project.run("-k", "model")
    lp = port_project.stage("model[bfloat16]")
    assert lp["status"] == "failed"
    assert lp["figures"]["first_divergence"] == "model.layers.0.input_layernorm"
    assert lp["figures"]["localisation"] and all("r" in row for row in lp["figures"]["localisation"])


def test_band_override_needs_and_reports_a_reason(port_project):
    port_project.edit_spec(
        'name = "mlp"\nhf_module = "model.layers.{i}.mlp"',
        'name = "mlp"\nhf_module = "model.layers.{i}.mlp"\nr_band = [0.5, 1.5]\n'
        'r_band_reason = "fused SwiGLU kernel accumulates in fp32"',
    )
    port_project.run("-k", "mlp-layer0-bfloat16")
    figures = port_project.stage("component[mlp-layer0-bfloat16]")["figures"]
    assert figures["band"] == [0.5, 1.5]
    assert figures["band_reason"] == "fused SwiGLU kernel accumulates in fp32"


def test_golden_all_modes_on_correct_port(llama_verdict):  # run with --autoport-golden-mode=all
    golden = llama_verdict.stage("golden")
    assert golden["status"] == "passed"
    figures = golden["figures"]
    assert figures["token_match"] == 1.0 and figures["teacher_forced_match"] == 1.0
    assert figures["logit_check_passed"] is True
    assert set(figures["logit_max_error"]) == {"top5", "top50", "top1000", "all"}


def test_decode_only_kv_bug_passes_model_and_fails_golden_with_divergences(port_project):
    # the token-generation path writes every new key and value into slot 0: prefill is right, decoding is not
    port_project.replace(
        "blocks/attention.py",
        "        batch, heads, _, head_dim = k.shape\n",
        "        batch, heads, _, head_dim = k.shape\n"
        "        if k.shape[2] == 1:\n"
        "            position_ids = torch.zeros_like(position_ids)\n",
    )
    port_project.run("-k", "model or compile or golden", "--autoport-dtype=float32")
    statuses = port_project.statuses()
    assert statuses["model"] == "passed"
    assert statuses["golden"] == "failed"
    golden = port_project.stage("golden")
    assert "greedy token match" in golden["message"] and "below the threshold 95%" in golden["message"]
    assert golden["figures"]["teacher_forced_match"] == 1.0  # context encoding is right
    first = golden["figures"]["free_running_divergences"][0]
    assert {"position", "golden_token", "port_token", "golden_margin", "port_token_in_golden_top5"} <= set(
        first
    )
    assert "free-running output diverges at new token" in golden["message"]
    assert "the fault is in the token-generation path" in golden["message"]
    assert golden["message"].endswith("(kb/kv_cache_and_decoding.md)")
    assert (
        golden["figures"]["likely_cause"]["signature"]
        == "stage=golden teacher_forced=passed free_running=failed"
    )


def test_teacher_forced_divergences_carry_tokens_and_margins(port_project):
    port_project.plant("rope_theta")
    port_project.run("-k", "golden", "--autoport-dtype=float32")
    golden = port_project.stage("golden")
    assert golden["status"] == "failed"
    divergences = golden["figures"]["divergences"]
    assert divergences, "a RoPE bug must change some teacher-forced argmax"
    first = divergences[0]
    assert isinstance(first["golden_text"], str) and isinstance(first["golden_margin"], float)
    assert "divergences (teacher-forced):" in golden["message"]
    assert "port token in golden top-5:" in golden["message"]
