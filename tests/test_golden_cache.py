"""The golden cache and the memory pre-check (issue 15, items 1 and 2).

The cache holds what the golden stage needs from the FP32 HF model (greedy tokens, teacher-forced
logits): a warm run gives the same verdict without loading the HF model, a copied cache folder is found
at its new place, a corrupt entry is rebuilt and said so, and the port's side is always recomputed, so a
planted decode bug still fails from a warm cache. The memory pre-check refuses to load a reference that
will not fit, with the figures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from pytest_autoport import golden_cache
from pytest_autoport.artifacts import RebuildWarning, artifact_key
from pytest_autoport.memory_check import (
    AVAILABLE_ENV,
    ReferenceTooLarge,
    check_reference_fits,
    parameter_count,
    parse_size,
)
from tests.test_decode_parity import KV_ONE_SLOT_OFF

REPO = Path(__file__).resolve().parents[1]
TIMING = {"cache", "hf_seconds", "hf_model_loaded", "seconds", "spent_s", "spent_before_s"}


# -- the cache, on a stand-in session (no HF model) ---------------------------------------------------


class FakeSession:
    """What the golden cache reads from a session; ``hf_model`` counts loads."""

    def __init__(self, artifacts: Path, weights: Path, prompts=("a b", "c"), num_tokens=3, regen=False):
        self.artifacts = artifacts
        self.weights = SimpleNamespace(path=weights)
        self.spec = SimpleNamespace(
            name="tiny",
            model=SimpleNamespace(hf_model_class="LlamaForCausalLM"),
            validation=SimpleNamespace(prompts=list(prompts), num_tokens_to_check=num_tokens),
            port=SimpleNamespace(dtype="float32"),
        )
        self.prompt_ids = [[len(p), 1] for p in prompts]
        self.tokenizer = SimpleNamespace(pad_token_id=0)
        self.is_encoder_decoder = False
        self.options = SimpleNamespace(regen_golden=regen)
        self.layers_record = None
        self.loads = 0

    @property
    def hf_model(self):
        self.loads += 1
        return object()


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "tokenizer.json").write_text('{"vocab": {}}')
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture
def computed(monkeypatch):
    """Replace the HF computation by fixed tokens and logits; returns the list of calls."""
    calls = []

    def compute(session):
        calls.append(session)
        torch.manual_seed(0)
        n = session.spec.validation.num_tokens_to_check
        tokens = [[(i + j) % 11 for j in range(n)] for i in range(len(session.prompt_ids))]
        return tokens, [torch.randn(n, 11) for _ in tokens], None

    monkeypatch.setattr(golden_cache, "compute", compute)
    return calls


def _reference(session):
    return golden_cache.golden_reference(session, regen=session.options.regen_golden)


def test_cold_then_warm_reads_the_same_golden_without_the_hf_model(tmp_path, checkpoint, computed):
    cold_session = FakeSession(tmp_path / "art", checkpoint)
    cold = _reference(cold_session)
    assert (cold.cache, cold_session.loads, len(computed)) == ("miss", 1, 1)
    entry = tmp_path / "art" / cold.entry
    assert entry.parent.name == "golden" and (entry / "READY").is_file()
    stored = load_file(str(entry / golden_cache.LOGITS_FILE))
    assert {"fp32.0", "top_ids.0", "top_values.0", "logsumexp.0"} <= set(stored)
    assert str(tmp_path) not in (entry / "manifest.json").read_text()  # relocatable: no path inside

    warm_session = FakeSession(tmp_path / "art", checkpoint)
    warm = _reference(warm_session)
    assert (warm.cache, warm.hf_seconds, warm_session.loads, len(computed)) == ("hit", 0.0, 0, 1)
    assert warm.tokens == cold.tokens and warm.entry == cold.entry
    assert all(torch.equal(a, b) for a, b in zip(warm.logits, cold.logits))


def test_copied_cache_folder_hits_at_its_new_place(tmp_path, checkpoint, computed):
    _reference(FakeSession(tmp_path / "here", checkpoint))
    shutil.copytree(tmp_path / "here" / "golden", tmp_path / "there" / "golden")
    moved = tmp_path / "moved_ckpt"  # the checkpoint too: its content decides, not its path
    shutil.copytree(checkpoint, moved)
    session = FakeSession(tmp_path / "there", moved)
    assert _reference(session).cache == "hit" and session.loads == 0


def _flip_last_byte(entry: Path) -> None:
    path = entry / golden_cache.LOGITS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_flip_last_byte, "checksum mismatch for logits.safetensors"),
        (lambda e: e.joinpath("READY").unlink(), "no READY marker"),
        (lambda e: e.joinpath(golden_cache.TOKENS_FILE).unlink(), "missing file tokens.json"),
    ],
    ids=["bytes-changed", "unsealed", "file-missing"],
)
def test_corrupt_entry_is_rebuilt_and_reported(tmp_path, checkpoint, computed, damage, reason):
    first = _reference(FakeSession(tmp_path / "art", checkpoint))
    damage(tmp_path / "art" / first.entry)
    session = FakeSession(tmp_path / "art", checkpoint)
    with pytest.warns(RebuildWarning, match="golden cache .* rebuilt"):
        again = _reference(session)
    assert again.cache == "rebuilt" and reason in again.figures()["cache_rebuilt_after"]
    assert session.loads == 1 and len(computed) == 2
    assert again.tokens == first.tokens
    assert _reference(FakeSession(tmp_path / "art", checkpoint)).cache == "hit"


def test_regen_option_rebuilds_a_sound_entry(tmp_path, checkpoint, computed):
    _reference(FakeSession(tmp_path / "art", checkpoint))
    session = FakeSession(tmp_path / "art", checkpoint, regen=True)
    again = _reference(session)
    assert again.cache == "rebuilt" and session.loads == 1 and len(computed) == 2
    assert "--autoport-regen-golden" in again.figures()["cache_rebuilt_after"]


def test_a_folder_not_made_by_autoport_is_left_alone(tmp_path, checkpoint, computed):
    session = FakeSession(tmp_path / "art", checkpoint)
    key = artifact_key(golden_cache.key_inputs(session))
    foreign = tmp_path / "art" / "golden" / f"tiny-{key}"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not made by autoport"):
        _reference(session)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_key_follows_prompts_tokens_dtype_and_checkpoint_content(tmp_path, checkpoint):
    def key(**changes) -> str:
        session = FakeSession(tmp_path / "art", checkpoint, **changes)
        return artifact_key(golden_cache.key_inputs(session))

    base = key()
    assert key() == base
    assert key(prompts=("a b", "d")) != base
    assert key(num_tokens=4) != base
    lp = FakeSession(tmp_path / "art", checkpoint)
    lp.spec.port.dtype = "bfloat16"
    assert artifact_key(golden_cache.key_inputs(lp)) != base
    reduced = FakeSession(tmp_path / "art", checkpoint)
    reduced.layers_record = {"judged": 1, "total": 2}  # --autoport-layers=1: the cut model's golden
    assert artifact_key(golden_cache.key_inputs(reduced)) != base
    (checkpoint / "tokenizer.json").write_text('{"vocab": {"x": 1}}')
    tokenizer_changed = key()
    assert tokenizer_changed != base
    save_file({"w": torch.arange(6.0).reshape(2, 3) + 1}, str(checkpoint / "model.safetensors"))
    assert key() not in (base, tokenizer_changed)


# -- the memory pre-check --------------------------------------------------------------------------


def test_parse_size():
    assert parse_size("1048576") == 1 << 20
    assert parse_size("512M") == 512 << 20
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("2g") == 2 << 30


def test_memory_precheck_refuses_with_the_figures(checkpoint, monkeypatch):
    assert parameter_count(checkpoint) == 6
    monkeypatch.setenv(AVAILABLE_ENV, "64G")
    figures = check_reference_fits(checkpoint)
    assert figures["weights_bytes"] == 24 and figures["available_bytes"] == 64 << 30
    monkeypatch.setenv(AVAILABLE_ENV, "1M")
    with pytest.raises(ReferenceTooLarge) as caught:
        check_reference_fits(checkpoint)
    message = str(caught.value)
    assert "will not fit in memory, so it was not loaded" in message
    assert "6 parameters x 4 bytes" in message and f"({AVAILABLE_ENV}=1M)" in message
    assert "--autoport-golden-streaming holds one decoder layer at a time" in message
    assert "--autoport-layers=N judges the first N decoder layers" in message


def test_session_does_not_load_a_reference_that_will_not_fit(tiny_weights, monkeypatch):
    from pytest_autoport import hf_reference
    from tests.helpers import llama_session

    session = llama_session(tiny_weights("llama"))
    monkeypatch.setattr(hf_reference, "load_hf_model", lambda *a, **k: pytest.fail("loaded anyway"))
    monkeypatch.setenv(AVAILABLE_ENV, "1M")
    with pytest.raises(ReferenceTooLarge, match=r"needs about 0\.\d+ GiB \([\d,]+ parameters"):
        session.hf_model  # noqa: B018


# -- verdicts: cold, warm, and a copied cache judging a planted decode bug ---------------------------


def _golden(project) -> dict:
    return project.stage("golden")


def _stable(figures: dict) -> dict:
    """The figures without the cache status and timings (which differ cold vs warm)."""
    out = {k: v for k, v in figures.items() if k not in TIMING}
    out["decode_parity"] = {k: v for k, v in figures["decode_parity"].items() if k != "seconds"}
    return out


def test_warm_cache_gives_the_same_verdict_without_hf_and_never_hides_a_bug(port_project, monkeypatch):
    args = ("-k", "golden", "--autoport-dtype=float32")
    port_project.run(*args)
    cold = _golden(port_project)
    assert cold["status"] == "passed", cold.get("message")
    assert cold["figures"]["cache"] == "miss" and cold["figures"]["hf_model_loaded"] is True

    # the reference would not fit (a hit needs none); the port, read and compiled, does
    monkeypatch.setenv(AVAILABLE_ENV, "128M")
    port_project.run(*args)
    warm = _golden(port_project)
    assert warm["status"] == "passed", warm.get("message")
    assert warm["figures"]["cache"] == "hit" and warm["figures"]["hf_seconds"] == 0.0
    assert warm["figures"]["hf_model_loaded"] is False
    assert "spent_s" not in warm["figures"]  # nothing loaded for it either
    assert "loading the FP32 HF reference" in cold["figures"]["spent_s"]
    assert _stable(warm["figures"]) == _stable(cold["figures"])

    elsewhere = port_project.root / "elsewhere"
    shutil.copytree(port_project.root / "agent_artifacts" / "golden", elsewhere / "golden")
    port_project.replace(*KV_ONE_SLOT_OFF, what="KV cache written at position + 1 in token generation")
    port_project.run(*args, f"--autoport-artifacts={elsewhere}")
    buggy = json.loads((elsewhere / "results" / "llama.partial.json").read_text())
    golden = next(s for s in buggy["stages"] if s["id"] == "golden")
    assert golden["status"] == "failed"
    assert golden["figures"]["cache"] == "hit" and golden["figures"]["hf_model_loaded"] is False
    assert golden["figures"]["decode_parity"]["passed"] is False
    assert "decode-step logits differ from HF" in golden["message"]


def test_clean_cache_command_lists_the_golden_cache_and_keeps_sound_entries(
    tmp_path, checkpoint, computed, capsys, monkeypatch
):
    from pytest_autoport import cli

    monkeypatch.setattr(cli, "COMMANDS", {"clean-cache": cli.COMMANDS["clean-cache"]})
    project = tmp_path / "project"
    (project / "port_specs").mkdir(parents=True)
    sound = _reference(FakeSession(project / "agent_artifacts", checkpoint))
    broken = project / "agent_artifacts" / "golden" / "tiny-0123456789abcdef"
    broken.mkdir()
    monkeypatch.chdir(project)
    assert cli.main(["clean-cache", "--json"]) == 0
    golden = json.loads(capsys.readouterr().out)["golden_cache"]
    assert sorted((Path(e["path"]).name, e["state"]) for e in golden["entries"]) == sorted(
        [(Path(sound.entry).name, "ready"), (broken.name, "empty")]
    )
    assert [Path(e["path"]).name for e in golden["removed"]] == [broken.name]
    assert not broken.exists() and (project / "agent_artifacts" / sound.entry / "READY").is_file()
