"""Workflow classes by (name, version), loaded from the modules named in the settings."""

import importlib
import inspect
import pkgutil
import sysconfig
import traceback
from pathlib import Path

from .bindings import Binding
from .definitions import Workflow
from .errors import DefinitionError, InterlockError, WorkflowNotFound
from .schedule_times import Schedule

# Frames in these directories (the engine, the standard library, installed packages) are the
# machinery a failure went through, not the line of the user's module that caused it.
_NOT_THE_CAUSE = {Path(__file__).resolve().parent,
                  *(Path(sysconfig.get_paths()[kind]).resolve() for kind in ("stdlib", "purelib", "platlib"))}


class WorkflowModuleError(InterlockError):
    """A module named in INTERLOCK_WORKFLOWS (or one of its submodules) failed to import."""

    code = "workflow-module-error"

    def __init__(self, module: str, error: BaseException):
        self.module, self.error = module, error
        where = _where_it_failed(error)
        super().__init__(f"cannot import workflow module {module!r}: {type(error).__name__}: {error}"
                         + (f" ({where})" if where else ""))


def _where_it_failed(error: BaseException) -> str | None:
    """The innermost line of the user's code in the traceback: not importlib's, not the engine's."""
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.filename.startswith("<") or _NOT_THE_CAUSE & set(Path(frame.filename).resolve().parents):
            continue
        return f"{frame.filename}, line {frame.lineno}"
    return None


def _import(name: str):
    try:
        return importlib.import_module(name)
    except Exception as exc:  # any failure inside a user's module is reported the same way
        raise WorkflowModuleError(name, exc) from exc


class Registry:
    def __init__(self):
        self._by_key: dict[tuple[str, int], type[Workflow]] = {}
        # Schedules declared at module level (``nightly = schedule(...)``), by name.
        self.schedules: dict[str, Schedule] = {}
        # Models bound to workflows (``bind(...)`` at module level), by workflow name.
        self.bindings: dict[str, Binding] = {}

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
        """Import each module (and a package's submodules) and add the workflows it defines.

        A module that fails to import raises ``WorkflowModuleError`` naming it (the original
        error is its ``error`` and ``__cause__``).
        """
        for name in names:
            module = _import(name)
            modules = [module]
            if hasattr(module, "__path__"):
                for info in pkgutil.iter_modules(module.__path__, prefix=name + "."):
                    modules.append(_import(info.name))
            for mod in modules:
                for _, obj in inspect.getmembers(mod, inspect.isclass):
                    if issubclass(obj, Workflow) and obj is not Workflow and obj.__module__ == mod.__name__:
                        self.add(obj)
                for _, obj in inspect.getmembers(mod, lambda o: isinstance(o, Schedule)):
                    self.add_schedule(obj, mod.__name__)
                for _, obj in inspect.getmembers(mod, lambda o: isinstance(o, Binding)):
                    self.add_binding(obj)
        for spec in self.schedules.values():
            if spec.workflow not in self.names():
                raise DefinitionError(f"schedule {spec.name!r} names workflow {spec.workflow!r}, "
                                      "which no loaded module defines")
        for binding in self.bindings.values():
            if binding.workflow not in self.names():
                raise DefinitionError(f"{binding.name} is bound to workflow {binding.workflow!r}, "
                                      "which no loaded module defines")
        return self

    def add_binding(self, binding: Binding) -> None:
        """A model bound to a workflow: one per workflow (its runs' rows are one table's)."""
        known = self.bindings.get(binding.workflow)
        if known is not None and known is not binding:
            raise DefinitionError(f"workflow {binding.workflow!r} is bound to {known.name} and to {binding.name}")
        self.bindings[binding.workflow] = binding

    def add_schedule(self, spec: Schedule, module: str) -> None:
        known = self.schedules.get(spec.name)
        if known is not None and known != spec:
            raise DefinitionError(f"schedule {spec.name!r} is declared twice (again in {module}): "
                                  "give one of them another name=")
        self.schedules[spec.name] = spec

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
