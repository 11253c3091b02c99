"""The knowledge base stays in step with the code it describes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_spec_reference_lists_every_spec_field_with_its_default():
    from pytest_autoport import spec

    rows = {}
    for line in (REPO / "kb" / "spec_reference.md").read_text().splitlines():
        match = re.match(r"\| `([a-z_]+(?:\[\])?\.[a-z_<>]+)` \| ([^|]+) \| ([^|]+) \|", line)
        if match:
            rows[match.group(1)] = match.group(3).strip()
    expected = {}
    tables = {**spec._TABLES, **spec._OPTIONAL_TABLES, "components[]": spec.Component}
    for table, cls in tables.items():
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = "required"
            expected[f"{table}.{f.name}"] = default
    documented = {key: value for key, value in rows.items() if not key.split(".")[1].startswith("<")}
    assert sorted(documented) == sorted(expected)
    for key, default in expected.items():
        if default == "required":
            assert documented[key] == "required", key
        else:
            text = documented[key].strip("`").replace("true", "True").replace("false", "False")
            assert eval(text) == default, key  # noqa: S307 - our own doc's literals


def test_spec_source_files_are_checked_against_the_source_dir(tmp_path):
    import pytest

    from pytest_autoport.errors import SpecError
    from pytest_autoport.spec import load_spec

    text = (REPO / "port_specs" / "llama.toml").read_text()
    source = tmp_path / "hf_src"
    source.mkdir()
    (source / "modeling_llama.py").write_text("")
    spec_file = tmp_path / "llama.toml"
    spec_file.write_text(text.replace("[port]", f'model_source_dir = "{source}"\n\n[port]', 1))
    with pytest.raises(SpecError, match=r"field 'model.config_file': configuration_llama.py is not in"):
        load_spec(spec_file, REPO, check_imports=False)
    (source / "configuration_llama.py").write_text("")
    assert load_spec(spec_file, REPO, check_imports=False).model.modeling_file == "modeling_llama.py"
    spec_file.write_text(text.replace('"modeling_llama.py"', '"src/modeling_llama.py"'))
    with pytest.raises(SpecError, match=r"field 'model.modeling_file': .* is not a plain file name"):
        load_spec(spec_file, REPO, check_imports=False)


@pytest.mark.parametrize(
    ("message", "topic"),
    [
        ("attention (layer 0) differs from HF in FP32: rel_fro 3.1e-01", "kb/attention_and_rope.md"),
        ("mlp (layer 0) differs from HF in FP32: rel_fro 1.2e+00", "kb/mlp_and_fused_weights.md"),
        ("decoder_layer (layer 0) differs from HF in FP32: rel_fro 9e-01", "kb/accuracy_debugging.md"),
        ("input_norm (layer 0) differs from HF in FP32: rel_fro 2e-02", "kb/norms.md"),
        ("post_attention_norm (layer 1) differs from HF in FP32", "kb/norms.md"),
        ("logits differ\nfirst divergent module: model.layers.0.self_attn", "kb/attention_and_rope.md"),
        ("logits differ\nfirst divergent module: model.layers.0", "kb/accuracy_debugging.md"),
        (
            "weight mapping is wrong:\n    HF tensors the conversion never used (1):\n"
            "      model.layers.1.self_attn.q_proj.weight",
            "kb/weight_conversion.md",
        ),
        ("checkpoint folder /x lacks tokenizer files (one of tokenizer.json)", "kb/checkpoint_folder.md"),
        ("pre-flight: 4 attention heads do not split over tp 3", "kb/sharding_and_memory.md"),
    ],
)
def test_failure_messages_name_their_likely_cause(message, topic):
    from pytest_autoport.errors import StageFailure
    from pytest_autoport.kb import likely_cause

    assert likely_cause(message).file == topic
    assert str(StageFailure(message)).endswith(f"({topic})")


def test_every_topic_has_signatures_and_kb_search_finds_them(capsys):
    from pytest_autoport.cli import main
    from pytest_autoport.kb import ORDER, topics

    names = {t.file for t in topics()}
    assert {f"kb/{name}.md" for name in ORDER} <= names
    assert all(t.signatures for t in topics() if t.file[3:-3] in ORDER)
    assert main(["kb", "search", "mlp (layer 0) differs from HF"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("kb/mlp_and_fused_weights.md")
    assert main(["kb", "search", "zzzz qqqq"]) == 1
    capsys.readouterr()
    # after a pip install there is no kb/ folder in the user's project: a topic prints by its name, or by
    # the kb/<file>.md a likely-cause line names
    for name in ("attention_and_rope", "kb/attention_and_rope.md"):
        assert main(["kb", "show", name]) == 0
        out = capsys.readouterr().out
        assert "attention_and_rope.md" in out.splitlines()[0] and "# Attention and RoPE variants" in out
    assert main(["kb", "show", "nonsense"]) == 1
    assert "topics: " in capsys.readouterr().out
