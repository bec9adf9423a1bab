"""The state diagrams of every workflow in the repository (the examples and the tests' own), read
back from the SVG the pages serve: no edge label overlaps another label, a state or an arrow, no
two states overlap, and nothing is drawn outside the picture."""

import importlib
import inspect
import pkgutil
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import workflows
from api.web import diagram
from engine import Workflow

ROOT = Path(__file__).resolve().parent.parent
SVG = "{http://www.w3.org/2000/svg}"
EM = 0.62          # a character's width in em: DejaVu Sans, the widest of the fonts the pages name, stays under it
LABEL_SIZE = 11.5


def _modules():
    names = ["workflows"] + [f"workflows.{m.name}" for m in pkgutil.iter_modules(workflows.__path__)]
    names += sorted(f"tests.{p.stem}" for p in (ROOT / "tests").glob("*workflows*.py") if not p.stem.startswith("test_"))
    return names


def _classes():
    found = {}
    for name in _modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Workflow) and obj is not Workflow and obj.__module__ == module.__name__:
                found[f"{obj.workflow_name}-v{obj.version}-{module.__name__}"] = obj
    return found


CLASSES = _classes()


def boxes_of(svg: str):
    """(states, labels, paths, width, height) read from a diagram's SVG: states and labels as
    (left, top, right, bottom, name), paths as point lists."""
    root = ET.fromstring(svg)
    width, height = (float(v) for v in root.get("viewBox").split()[2:])
    states, labels, paths = [], [], []
    for g in root.iter(f"{SVG}g"):
        kind = (g.get("class") or "").split()
        if "node" in kind:
            rect = g.find(f"{SVG}rect")
            x, y, w, h = (float(rect.get(k)) for k in ("x", "y", "width", "height"))
            states.append((x, y, x + w, y + h, g.get("data-state")))
            name = g.find(f"{SVG}text").text
            assert len(name) * 13 * EM <= w, f"state {name} does not fit its box"
        elif "edge" in kind:
            text = g.find(f"{SVG}text")
            paths.append((text.text if text is not None else "(no event)",
                          diagram.bezier_points(g.find(f"{SVG}path").get("d"), steps=64)))
            if text is None:
                continue
            x, y, anchor = float(text.get("x")), float(text.get("y")), text.get("text-anchor")
            w = len(text.text) * LABEL_SIZE * EM
            left = x - w if anchor == "end" else x - w / 2 if anchor == "middle" else x
            labels.append((left, y - LABEL_SIZE * 0.8, left + w, y + LABEL_SIZE * 0.25, text.text))
    return states, labels, paths, width, height


def collisions(svg: str) -> list[str]:
    states, labels, paths, width, height = boxes_of(svg)
    found = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            if diagram.overlaps(a, b):
                found.append(f"label {a[4]!r} overlaps label {b[4]!r}")
        for s in states:
            if diagram.overlaps(a, s):
                found.append(f"label {a[4]!r} overlaps state {s[4]!r}")
        for name, points in paths:
            if any(diagram.inside(p, a) for p in points):
                found.append(f"label {a[4]!r} lies on the arrow of {name!r}")
        if a[0] < 0 or a[1] < 0 or a[2] > width or a[3] > height:
            found.append(f"label {a[4]!r} is cut at the picture's edge")
    for i, a in enumerate(states):
        for b in states[i + 1:]:
            if diagram.overlaps(a, b):
                found.append(f"state {a[4]!r} overlaps state {b[4]!r}")
        if a[0] < 0 or a[1] < 0 or a[2] > width or a[3] > height:
            found.append(f"state {a[4]!r} is cut at the picture's edge")
    return found


def test_every_workflow_in_the_repository_is_checked():
    assert len(CLASSES) >= 40
    assert {"orders-v1-workflows.orders", "cargo-v1-workflows.cargo"} <= set(CLASSES)


@pytest.mark.parametrize("key", sorted(CLASSES))
def test_no_label_overlaps_a_label_a_state_or_an_arrow(key):
    cls = CLASSES[key]
    svg = str(diagram.render(cls, current={next(iter(cls.states_map))}, label=key))
    assert collisions(svg) == []


def test_the_checker_finds_a_label_on_a_state():
    cls = CLASSES["orders-v1-workflows.orders"]
    svg = str(diagram.render(cls, label="orders"))
    state = re.search(r'<rect x="([\d.]+)" y="([\d.]+)"', svg)
    moved = re.sub(r'(<text x=")[\d.]+(" y=")[\d.]+(" text-anchor="start">)',
                   lambda m: f"{m[1]}{state[1]}{m[2]}{float(state[2]) + 20}{m[3]}", svg, count=1)
    assert any("overlaps state" in c for c in collisions(moved))



def _version_pairs():
    """Each workflow of the repository with several versions: every two consecutive ones."""
    by_name = {}
    for cls in CLASSES.values():
        by_name.setdefault(cls.workflow_name, {})[cls.version] = cls
    return {f"{name}-v{a}-v{b}": (found[a], found[b]) for name, found in sorted(by_name.items())
            for a, b in zip(sorted(found), sorted(found)[1:])}


VERSION_PAIRS = _version_pairs()


@pytest.mark.parametrize("key", sorted(VERSION_PAIRS))
def test_diagrams_with_a_diffs_marks_keep_their_labels_clear(key):
    """The marks of a diff (a sign before each marked event, a badge per marked state) are placed
    like everything else: nothing overlaps."""
    from api.web.versions import marks
    from engine.workflow_diff import diff

    old, new = VERSION_PAIRS[key]
    for cls, mark in zip((old, new), marks(diff(old, new))):
        svg = str(diagram.render(cls, marks=mark, label=key))
        assert collisions(svg) == []
        assert ("mark-" in svg) == bool(mark["states"] or mark["edges"])


def test_the_repository_has_versions_to_compare():
    assert {"delivery-v1-v2", "diff_kinds-v1-v2", "diff_nested-v1-v2"} <= set(VERSION_PAIRS)
