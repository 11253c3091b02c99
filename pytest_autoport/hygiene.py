"""Porting rules checked on the port's source by its syntax tree, each violation as ``file:line``.

Rules: ``bare-except`` (an ``except:`` hides the real error), ``transformers-neuronx`` (the retired
library; port to NxD Inference), ``monkeypatch`` (assigning into torch, transformers or NxD modules
changes them for every model in the process), ``print`` (use ``logging``), ``class-name`` (a class
whose name, without a ``Neuron`` prefix, is no class of the HF modeling module must say why in its
docstring). A spec waives a rule only with a written reason (``[hygiene] rule = "reason"``)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

RULES = ("bare-except", "transformers-neuronx", "monkeypatch", "print", "class-name")
FRAMEWORKS = (
    "torch",
    "transformers",
    "neuronx_distributed",
    "neuronx_distributed_inference",
    "torch_neuronx",
)


@dataclass(frozen=True)
class Violation:
    file: Path
    line: int
    rule: str
    text: str

    def format(self, root: Path) -> str:
        shown = self.file.relative_to(root) if self.file.is_relative_to(root) else self.file
        return f"{shown}:{self.line}: [{self.rule}] {self.text}"


def check_file(file: Path, hf_class_names: set[str] | None = None) -> list[Violation]:
    tree = ast.parse(file.read_bytes(), filename=str(file))
    found: list[Violation] = []

    def add(node, rule, text):
        found.append(Violation(file, node.lineno, rule, text))

    framework_names = _framework_aliases(tree)
    script_lines = _main_block_lines(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.type is None:
            add(node, "bare-except", "bare 'except:': catch the exception you expect")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] == "transformers_neuronx" for m in modules):
                add(node, "transformers-neuronx", "imports transformers_neuronx: use NxD Inference")
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                root = _root_name(target)
                if isinstance(target, ast.Attribute) and root in framework_names:
                    add(node, "monkeypatch", f"assigns {ast.unparse(target)}: subclass or wrap instead")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "print" and node.lineno not in script_lines:  # a script's own output is fine
                add(node, "print", "print(): use logging.getLogger(__name__)")
            elif node.func.id == "setattr" and node.args and _root_name(node.args[0]) in framework_names:
                add(node, "monkeypatch", f"setattr on {ast.unparse(node.args[0])}: subclass or wrap instead")
        elif isinstance(node, ast.ClassDef) and hf_class_names:
            bare = node.name.removeprefix("Neuron")
            if node.name not in hf_class_names and bare not in hf_class_names and not ast.get_docstring(node):
                add(
                    node,
                    "class-name",
                    f"class {node.name} matches no HF class: rename it or say why in a docstring",
                )
    return sorted(found, key=lambda v: (str(v.file), v.line))


def _main_block_lines(tree) -> set[int]:
    """Lines of the module's ``if __name__ == "__main__":`` blocks (the file run as a script)."""
    lines: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test).replace("'", '"') in (
            '__name__ == "__main__"',
            '"__main__" == __name__',
        ):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def _framework_aliases(tree) -> set[str]:
    """Names bound to framework modules by this file's imports (``torch``, ``F``, ``nn``...)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FRAMEWORKS:
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in FRAMEWORKS:
                # ``from torch import nn`` binds a module; ``from torch.nn import Linear`` a class: both
                # are shared with every other model in the process
                names.update(alias.asname or alias.name for alias in node.names)
    return names


def _root_name(node) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def hf_class_names(hf_model_class: str) -> set[str]:
    """The classes of the HF modeling module that defines ``hf_model_class``."""
    import inspect
    import sys

    import transformers

    cls = getattr(transformers, hf_model_class, None)
    if cls is None:
        return set()
    module = sys.modules[cls.__module__]
    return {name for name, value in vars(module).items() if inspect.isclass(value)}


def check_port(files: list[Path], hf_names: set[str], waived: dict[str, str]) -> list[Violation]:
    return [v for f in files for v in check_file(f, hf_names) if v.rule not in waived]
