"""Workflow classes by (name, version), loaded from the modules named in the settings."""

import importlib
import inspect
import pkgutil

from .definitions import Workflow
from .errors import DefinitionError, WorkflowNotFound


class Registry:
    def __init__(self):
        self._by_key: dict[tuple[str, int], type[Workflow]] = {}

    def add(self, cls: type[Workflow]) -> type[Workflow]:
        key = (cls.workflow_name, cls.version)
        known = self._by_key.get(key)
        if known is not None and known is not cls:
            raise DefinitionError(
                f"workflow {key[0]!r} version {key[1]} is defined twice: "
                f"{known.__module__}.{known.__qualname__} and {cls.__module__}.{cls.__qualname__}")
        self._by_key[key] = cls
        return cls

    def load_modules(self, names) -> "Registry":
        """Import each module (and a package's submodules) and add the workflows it defines."""
        for name in names:
            module = importlib.import_module(name)
            modules = [module]
            if hasattr(module, "__path__"):
                for info in pkgutil.iter_modules(module.__path__, prefix=name + "."):
                    modules.append(importlib.import_module(info.name))
            for mod in modules:
                for _, obj in inspect.getmembers(mod, inspect.isclass):
                    if issubclass(obj, Workflow) and obj is not Workflow and obj.__module__ == mod.__name__:
                        self.add(obj)
        return self

    def get(self, name: str, version: int | None = None) -> type[Workflow]:
        if version is not None:
            try:
                return self._by_key[(name, int(version))]
            except (KeyError, ValueError, TypeError):
                raise WorkflowNotFound(name, version) from None
        versions = self.versions(name)
        if not versions:
            raise WorkflowNotFound(name)
        return self._by_key[(name, versions[-1])]

    def versions(self, name: str) -> list[int]:
        return sorted(v for (n, v) in self._by_key if n == name)

    def names(self) -> list[str]:
        return sorted({n for (n, _) in self._by_key})

    def all(self) -> list[type[Workflow]]:
        return [self._by_key[k] for k in sorted(self._by_key)]
