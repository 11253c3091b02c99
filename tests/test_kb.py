"""The knowledge base stays in step with the code it describes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

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
