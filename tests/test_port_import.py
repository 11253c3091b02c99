"""A port that fails to import is named with the file and line at fault, not only the error."""

from __future__ import annotations

import pytest

from pytest_autoport.errors import SpecError
from pytest_autoport.port_import import import_from_file


def _port(tmp_path, body: str):
    package = tmp_path / "my_port_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def build():\n    return 1\n\n\nVALUE = build() + undefined_name\n")
    port = package / "modeling.py"
    port.write_text(body)
    return port


@pytest.mark.parametrize(
    ("body", "line", "error"),
    [
        ("import torch\n\nclass Port:\n    def f(self)\n        pass\n", 4, "SyntaxError"),
        ("import math\nfrom missing_package_xyz import thing\n", 2, "ModuleNotFoundError"),
        ("import math\n\nfrom .helpers import VALUE\n", 5, "NameError"),  # raised in a module it imports
    ],
    ids=["syntax", "missing-import", "in-a-sibling-module"],
)
def test_an_import_error_names_the_line_at_fault(tmp_path, body, line, error):
    port = _port(tmp_path, body)
    spec = tmp_path / "spec.toml"
    with pytest.raises(SpecError) as caught:
        import_from_file(port, "Port", spec, "port.class")
    message = str(caught.value)
    at_fault = port if error != "NameError" else port.parent / "helpers.py"
    assert message.startswith(f"{spec}: field 'port.class': importing {port} failed at {at_fault}:{line}: ")
    assert f": {error}: " in message
