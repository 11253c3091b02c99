"""Import stand-ins for the Neuron SDK's binary packages, for running real NxDI/NxD in CPU mode.

NxDI and NxD import ``torch_neuronx``, ``neuronxcc``, ``nki``, ``nkilib``, ``libneuronxla`` and
``torch_xla`` at module level, but their CPU mode never calls them on a tensor (the one call it
makes is ``torch_neuronx.utils.get_platform_target()``). Where a package is really installed it is
used; where it is missing, ``install()`` puts an import hook in front that answers every import
below that name with a module of placeholders. A placeholder can be subclassed, used as a
decorator, indexed and attribute-chained (what module-level NxD code does), but calling one with a
tensor raises, so a stand-in never computes anything. Test-only: the product never imports this.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

PACKAGES = ("torch_neuronx", "neuronxcc", "nki", "nkilib", "libneuronxla", "torch_xla")
PLATFORM_TARGET = "trn2"  # what get_platform_target() answers; NxDI's CPU mode only compares it
# NxD builds the torchbind classes of torch_neuronx's runtime into annotations at class definition
TORCHBIND_CLASSES = ("SPMDModel", "LayoutTransformation")


# a real torch_xla wires up the Neuron runtime when it can import this: it must stay missing
NEVER_STOOD_IN = ("libneuronxla.libneuronpjrt_path",)


class StandInCalledOnTensor(RuntimeError):
    """A binary-package stand-in was asked to compute: CPU mode should never get there."""


def _has_tensor(values) -> bool:
    torch = sys.modules.get("torch")
    for value in values:
        if torch is not None and isinstance(value, torch.Tensor):
            return True
        if isinstance(value, (list, tuple)) and _has_tensor(value):
            return True
        if isinstance(value, dict) and _has_tensor(value.values()):
            return True
    return False


class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return placeholder(f"{cls.__qualname__}.{name}")

    def __getitem__(cls, key):
        return cls

    def __call__(cls, *args, **kwargs):
        if _has_tensor(args) or _has_tensor(kwargs.values()):
            raise StandInCalledOnTensor(f"stand-in {cls.__qualname__} called on a tensor")
        if len(args) == 1 and callable(args[0]) and not kwargs:  # used as a decorator
            return placeholder(f"{cls.__qualname__}({getattr(args[0], '__name__', '?')})")
        return super().__call__(*args, **kwargs)

    def __iter__(cls):
        return iter(())

    def __bool__(cls):
        return False


class Placeholder(metaclass=_Meta):
    """Base of every placeholder: instances also chain attributes and refuse tensors."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return placeholder(f"{type(self).__qualname__}().{name}")

    def __call__(self, *args, **kwargs):
        return type(self)(*args, **kwargs)

    def __getitem__(self, key):
        return self


def placeholder(name: str) -> type:
    return _Meta(name, (Placeholder,), {"__module__": "autoport_stand_in"})


def get_platform_target(*args, **kwargs) -> str:
    return PLATFORM_TARGET


class _StandInModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        if name == "get_platform_target":
            return get_platform_target
        if f"{self.__name__}.{name}" in NEVER_STOOD_IN:
            raise AttributeError(name)
        value = placeholder(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []  # a package: every submodule imports too
        module.__autoport_stand_in__ = True
        return module

    def exec_module(self, module):
        if module.__name__ == "torch_neuronx.utils":
            module.get_platform_target = get_platform_target
        if module.__name__ == "torch_neuronx":
            _stand_in_torchbind_classes()


def _stand_in_torchbind_classes() -> None:
    """torch_neuronx's runtime library registers these torchbind classes when it loads."""
    import torch

    namespace = torch.classes.neuron
    for name in TORCHBIND_CLASSES:
        if name not in namespace.__dict__:
            setattr(namespace, name, placeholder(f"torch.classes.neuron.{name}"))


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, roots: tuple[str, ...]):
        self.roots = roots

    def find_spec(self, fullname, path=None, target=None):
        if fullname in NEVER_STOOD_IN:
            return None
        if fullname.split(".", 1)[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=True)
        return None


_installed: _Finder | None = None


def missing_packages() -> tuple[str, ...]:
    return tuple(
        name
        for name in PACKAGES
        if name not in sys.modules
        and importlib.util.find_spec(name) is None
        or getattr(sys.modules.get(name), "__autoport_stand_in__", False)
    )


def install() -> tuple[str, ...]:
    """Stand in for the binary packages that are missing here; returns their names."""
    global _installed
    if _installed is not None:
        return _installed.roots
    roots = missing_packages()
    if roots:
        _installed = _Finder(roots)
        sys.meta_path.insert(0, _installed)
    return roots
