"""A workflow's state diagram as inline SVG, laid out in Python (no JavaScript needed to read it).

Layered top-to-bottom layout: states are ranked by their longest path from the initial state
(an edge that leads back is laid out reversed and drawn with its arrow pointing up), edges spanning several ranks get waypoints,
and each rank is ordered by the barycenter of its neighbours. The layout is computed once per
workflow class; drawing it marks the current, visited and counted states and taken transitions.

A diff of two versions marks states and transitions as added, removed, changed or renamed
(``marks``): a state's mark is a badge with a sign in the place kept free for its count, an
edge's a sign before each marked event in its label, so the labels are placed with the signs in
them (a layout per workflow and set of marked edges) and keep the same guarantees.
"""

import itertools
from dataclasses import dataclass, field
from functools import lru_cache

from markupsafe import Markup, escape

NODE_H = 38
RANK_GAP = 64          # vertical space between two ranks (edge labels live there)
NODE_GAP = 44          # horizontal space between two neighbours in a rank
DUMMY_W = 18
MARGIN = 24
TOP = 44               # room for the start dot above the first rank
NODE_FONT = 13         # px, a state's name
LABEL_FONT = 11.5      # px, an edge's events
EM = 0.62              # a character's width in em: an upper bound for the sans-serif fonts used
LABEL_GAP = 5          # a label's distance from its arrow
SPREADS = 4            # layouts tried, each with more room, until every label has a free place

_ids = itertools.count(1)
# What a diff can say about a state or a transition, and the sign drawn for it (not colour alone).
MARKS = {"added": "+", "removed": "\u2212", "changed": "~", "renamed": "="}


@dataclass
class Node:
    id: str
    label: str
    initial: bool = False
    final: bool = False
    dummy: bool = False
    rank: int = 0
    order: float = 0.0
    x: float = 0.0
    y: float = 0.0
    w: float = DUMMY_W

    @property
    def left(self):
        return self.x - self.w / 2

    @property
    def right(self):
        return self.x + self.w / 2


@dataclass
class Edge:
    source: str
    target: str
    events: list
    back: bool = False     # leads back up: laid out reversed, drawn with the arrow at its top
    chain: list = field(default_factory=list)  # node ids from the upper end to the lower one
    signs: dict = field(default_factory=dict)  # event -> the sign of its mark (MARKS), drawn in the label

    @property
    def ends(self):
        return (self.target, self.source) if self.back else (self.source, self.target)


@dataclass
class Label:
    x: float
    y: float           # the text's baseline
    anchor: str        # start, middle or end
    text: str

    @property
    def box(self):
        return label_box(self.x, self.y, self.anchor, self.text)


@dataclass
class Layout:
    nodes: dict
    edges: list
    width: float
    height: float
    routes: dict = field(default_factory=dict)   # id(edge): (path d, sampled points, Label)


def text_width(text: str, size: float) -> float:
    return len(text) * size * EM


def label_box(x, y, anchor, text, size=LABEL_FONT):
    """(left, top, right, bottom) of an edge label drawn at ``x``/``y`` (baseline) with ``anchor``."""
    w = text_width(text, size)
    left = x - w if anchor == "end" else x - w / 2 if anchor == "middle" else x
    return left, y - size * 0.8, left + w, y + size * 0.25


def overlaps(a, b, pad=0.0) -> bool:
    return a[0] - pad < b[2] and b[0] - pad < a[2] and a[1] - pad < b[3] and b[1] - pad < a[3]


def inside(point, box, pad=0.0) -> bool:
    return box[0] - pad < point[0] < box[2] + pad and box[1] - pad < point[1] < box[3] + pad


def bezier_points(d: str, steps: int = 24) -> list:
    """Points along an SVG path made of M and C commands (what ``_route`` draws)."""
    import re

    numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", d)]
    x, y = numbers[0], numbers[1]
    points, rest = [(x, y)], numbers[2:]
    for i in range(0, len(rest) - 5, 6):
        c1x, c1y, c2x, c2y, ex, ey = rest[i:i + 6]
        for k in range(1, steps + 1):
            t = k / steps
            u = 1 - t
            points.append((u ** 3 * x + 3 * u * u * t * c1x + 3 * u * t * t * c2x + t ** 3 * ex,
                           u ** 3 * y + 3 * u * u * t * c1y + 3 * u * t * t * c2y + t ** 3 * ey))
        x, y = ex, ey
    return points


def layout_of(states, transitions, signs=None) -> Layout:
    """``states``: [(id, label, initial, final)], ``transitions``: [(source, event, target)],
    ``signs``: {(source, event, target): sign} to write before those events in their labels.

    Laid out, then each edge label is put where it touches no state, no other label and no
    arrow; when some label finds no such place, the layout is made again with more room."""
    for spread in range(SPREADS):
        lay = _layout_once(states, transitions, NODE_GAP + spread * 36, RANK_GAP + spread * 26, signs or {})
        if _route(lay) or spread == SPREADS - 1:
            return lay
    raise AssertionError("unreachable")


def _layout_once(states, transitions, node_gap, rank_gap, signs) -> Layout:
    nodes = {sid: Node(sid, label, initial, final, w=max(108.0, text_width(label, NODE_FONT) + 30))
             for sid, label, initial, final in states}
    merged: dict = {}
    for source, event, target in transitions:
        if source in nodes and target in nodes:
            merged.setdefault((source, target), []).append(event)
    edges = [Edge(s, t, events, signs={ev: signs[(s, ev, t)] for ev in events if (s, ev, t) in signs})
             for (s, t), events in merged.items()]
    _mark_back_edges(nodes, edges)
    _rank(nodes, edges)
    ranks = _add_dummies(nodes, edges)
    _order(nodes, edges, ranks)
    width = _place(nodes, edges, ranks, node_gap, rank_gap)
    height = TOP + len(ranks) * (NODE_H + rank_gap) - rank_gap + MARGIN
    return Layout(nodes, edges, width, height)


def _mark_back_edges(nodes, edges):
    out = {sid: [] for sid in nodes}
    for e in edges:
        out[e.source].append(e)
    state = {}  # 1: on the stack, 2: done
    roots = [n for n in nodes.values() if n.initial] + list(nodes.values())
    for root in roots:
        if root.id in state:
            continue
        stack = [(root.id, iter(out[root.id]))]
        state[root.id] = 1
        while stack:
            sid, it = stack[-1]
            edge = next(it, None)
            if edge is None:
                state[sid] = 2
                stack.pop()
                continue
            seen = state.get(edge.target)
            if seen == 1:
                edge.back = True
            elif seen is None:
                state[edge.target] = 1
                stack.append((edge.target, iter(out[edge.target])))


def _rank(nodes, edges):
    forward = [e.ends for e in edges if e.source != e.target]
    indegree = {sid: 0 for sid in nodes}
    for _, bottom in forward:
        indegree[bottom] += 1
    ready = [sid for sid in nodes if indegree[sid] == 0]
    ready.sort(key=lambda sid: not nodes[sid].initial)
    while ready:
        sid = ready.pop(0)
        for top, bottom in forward:
            if top == sid:
                nodes[bottom].rank = max(nodes[bottom].rank, nodes[sid].rank + 1)
                indegree[bottom] -= 1
                if indegree[bottom] == 0:
                    ready.append(bottom)


def _add_dummies(nodes, edges):
    for e in edges:
        top, bottom = e.ends
        if top == bottom:
            e.chain = [top, bottom]
            continue
        chain = [top]
        for rank in range(nodes[top].rank + 1, nodes[bottom].rank):
            dummy = Node(f"\0{e.source}>{e.target}@{rank}", "", dummy=True, rank=rank)
            nodes[dummy.id] = dummy
            chain.append(dummy.id)
        chain.append(bottom)
        e.chain = chain
    ranks = [[] for _ in range(max((n.rank for n in nodes.values()), default=0) + 1)]
    for n in nodes.values():
        ranks[n.rank].append(n)
    for i, rank in enumerate(ranks):
        for j, n in enumerate(rank):
            n.order = j
    return ranks


def _order(nodes, edges, ranks):
    up, down = {sid: [] for sid in nodes}, {sid: [] for sid in nodes}
    for e in edges:
        for a, b in zip(e.chain, e.chain[1:]):
            if nodes[a].rank < nodes[b].rank:
                down[a].append(b)
                up[b].append(a)
    for sweep in range(6):
        rows = ranks[1:] if sweep % 2 == 0 else list(reversed(ranks[:-1]))
        for rank in rows:
            for n in rank:
                near = up[n.id] if sweep % 2 == 0 else down[n.id]
                if near:
                    n.order = sum(nodes[o].order for o in near) / len(near)
            rank.sort(key=lambda n: n.order)
            for j, n in enumerate(rank):
                n.order = j


def _place(nodes, edges, ranks, node_gap=NODE_GAP, rank_gap=RANK_GAP) -> float:
    rows = []
    for rank in ranks:
        xs, x = [], 0.0
        for n in rank:
            xs.append(x + n.w / 2)
            x += n.w + node_gap
        rows.append((rank, xs, x - node_gap))
    width = max((w for _, _, w in rows), default=0.0)
    for i, (rank, xs, w) in enumerate(rows):
        shift = MARGIN + (width - w) / 2
        for n, x in zip(rank, xs):
            n.x, n.y = x + shift, TOP + i * (NODE_H + rank_gap) + NODE_H / 2
    # Pull nodes toward their neighbours (straighter edges), keeping order and spacing.
    links = {sid: [] for sid in nodes}
    for e in edges:
        for a, b in zip(e.chain, e.chain[1:]):
            if nodes[a].rank != nodes[b].rank:
                links[a].append(b)
                links[b].append(a)
    for _ in range(4):
        for rank in ranks:
            want = [sum(nodes[o].x for o in links[n.id]) / len(links[n.id]) if links[n.id] else n.x
                    for n in rank]
            for j, n in enumerate(rank):
                low = rank[j - 1].right + node_gap + n.w / 2 if j else MARGIN + n.w / 2
                n.x = max(want[j], low)
            for j in range(len(rank) - 2, -1, -1):  # then pull back what was pushed too far right
                n, nxt = rank[j], rank[j + 1]
                n.x = min(n.x, nxt.left - node_gap - n.w / 2) if n.x + n.w / 2 + node_gap > nxt.left else n.x
    left = min((n.left for n in nodes.values()), default=MARGIN)
    for n in nodes.values():
        n.x += MARGIN - left
    return max((n.right for n in nodes.values()), default=0.0) + MARGIN


@lru_cache(maxsize=256)
def _cached(cls, signs: tuple = ()) -> Layout:
    """The layout of ``cls``; ``signs``: ((source, event, target), sign) pairs of marked edges."""
    states = [(s.id, s.name, bool(s.initial), bool(s.final)) for s in cls.states_map.values()]
    transitions = [(s.id, t.event, target.id) for s in cls.states_map.values()
                   for t in s.transitions for target in t.targets]
    return layout_of(states, transitions, dict(signs))


def edge_key(source, event, target) -> str:
    return f"{source}|{event}|{target}"


def render(cls, *, current=(), visited=(), taken=(), counts=None, label="", failed=False, marks=None) -> Markup:
    """The SVG for ``cls``: ``current``/``visited`` state ids, ``taken`` edge keys, ``counts`` per state;
    ``failed``: the run failed in its current states (drawn red, not as a healthy current state);
    ``marks``: ``{"states": {state id: mark}, "edges": {edge key: mark}}``, a mark one of MARKS
    (a marked state's badge takes the place of its count)."""
    marks = marks or {}
    state_marks, edge_marks = marks.get("states", {}), marks.get("edges", {})
    signs = tuple(sorted((tuple(key.split("|", 2)), MARKS[mark]) for key, mark in edge_marks.items()))
    lay = _cached(cls, signs)
    uid = f"d{next(_ids)}"
    current, visited, taken = set(current), set(visited), set(taken)
    counts = counts or {}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="diagram" viewBox="0 0 {lay.width:.0f} {lay.height:.0f}" '
           f'width="{lay.width:.0f}" height="{lay.height:.0f}" role="img" aria-label="{escape(label)}">',
           "<defs>",
           f'<marker id="{uid}-a" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrow"/></marker>',
           f'<marker id="{uid}-t" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrow taken"/></marker>']
    for mark in sorted(set(edge_marks.values())):
        out.append(f'<marker id="{uid}-{mark}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
                   f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
                   f'class="arrow mark-{mark}"/></marker>')
    out.append("</defs>")
    out += _edges(lay, uid, taken, edge_marks)
    for n in lay.nodes.values():
        if not n.dummy:
            out.append(_node(n, n.id in current, n.id in visited, counts.get(n.id), failed, state_marks.get(n.id)))
    out.append("</svg>")
    return Markup("".join(out))


def _route(lay) -> bool:
    """Each edge's path and label (in ``lay.routes``); False when some label found no free place."""
    nodes = lay.nodes
    # Ports: spread the ends of several edges along a node's bottom (out) and top (in).
    outs, ins, port = {}, {}, {}
    for e in lay.edges:
        if e.source != e.target:
            outs.setdefault(e.chain[0], []).append(e)
            ins.setdefault(e.chain[-1], []).append(e)
    for side, groups, near in (("out", outs, 1), ("in", ins, -2)):
        for sid, group in groups.items():
            group.sort(key=lambda e: (nodes[e.chain[near]].x, e.back))
            step = min(26.0, nodes[sid].w / (len(group) + 1))
            for i, e in enumerate(group):
                port[(id(e), side)] = (i - (len(group) - 1) / 2) * step
    pairs = {}  # edges between the same two nodes (one each way): labels go on either side
    for e in lay.edges:
        pairs.setdefault(frozenset((e.source, e.target)), []).append(e)
    paths = {}
    for e in lay.edges:
        if e.source == e.target:
            n = nodes[e.source]
            x, y = n.right, n.y
            d = f"M{x:.1f},{y - 9:.1f} C{x + 34:.1f},{y - 26:.1f} {x + 34:.1f},{y + 26:.1f} {x + 1:.1f},{y + 9:.1f}"
            prefer = "start"
        else:
            top, bottom = nodes[e.chain[0]], nodes[e.chain[-1]]
            offset = port[(id(e), "out")]
            pts = [(top.x + offset, top.y + NODE_H / 2 + (1 if e.back else 0))]
            pts += [(nodes[c].x, nodes[c].y) for c in e.chain[1:-1]]
            pts.append((bottom.x + port[(id(e), "in")], bottom.y - NODE_H / 2 - (0 if e.back else 1)))
            d = f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"
            for (ax, ay), (bx, by) in zip(pts, pts[1:]):
                h = (by - ay) / 2
                d += f" C{ax:.1f},{ay + h:.1f} {bx:.1f},{by - h:.1f} {bx:.1f},{by:.1f}"
            lean = offset + (pts[1][0] - pts[0][0]) / 4
            pair = pairs[frozenset((e.source, e.target))]
            if len(pair) > 1:
                lean = -1 if port[(id(e), "out")] == min(port[(id(o), "out")] for o in pair) else 1
            prefer = "end" if lean < 0 else "start"
        paths[id(e)] = (d, bezier_points(d))
    obstacles = []
    for n in nodes.values():
        if n.dummy:
            continue
        top = n.y - NODE_H / 2
        obstacles.append((n.left, top, n.right, n.y + NODE_H / 2))
        obstacles.append((n.right - 29, top - 11, n.right + 21, top + 11))  # a count badge's place
        if n.initial:
            obstacles.append((n.x - 7, top - 33, n.x + 7, top))
    all_points = [p for _, points in paths.values() for p in points]
    placed, ok = [], True
    for e in lay.edges:
        d, points = paths[id(e)]
        # python-statemachine names some events twice in one ("done_state_x done.state.x"): the first.
        text = " / ".join(dict.fromkeys(_event_text(ev, e.signs.get(ev)) for ev in e.events if ev and ev.strip()))
        if not text:  # an eventless transition: no label, but its marks' signs
            text = " ".join(dict.fromkeys(e.signs.get(ev) for ev in e.events if e.signs.get(ev)))
        if not text:
            lay.routes[id(e)] = (d, None)
            continue
        best, best_cost = None, None
        for label in _candidates(points, text, prefer, e.source == e.target):
            box = label.box
            cost = (sum(overlaps(box, o, 3) for o in obstacles) + sum(overlaps(box, b, 3) for b in placed)
                    + sum(inside(p, box, 2) for p in all_points) + (box[0] < 2 or box[1] < 2) * 100)
            if best_cost is None or cost < best_cost:
                best, best_cost = label, cost
            if cost == 0:
                break
        ok = ok and best_cost == 0
        placed.append(best.box)
        lay.routes[id(e)] = (d, best)
    right = max([b[2] for b in placed] + [p[0] for p in all_points] + [0.0])
    bottom = max([b[3] for b in placed] + [0.0])
    lay.width = max(lay.width, right + MARGIN / 2)
    lay.height = max(lay.height, bottom + MARGIN / 2)
    return ok


def _event_text(event, sign=None) -> str:
    return f"{sign} {event.split()[0]}" if sign else event.split()[0]


def edge_mark(marks: list) -> str | None:
    """One mark for an edge drawing several events: theirs if all have the same, else changed."""
    if not any(marks):
        return None
    return marks[0] if len(set(marks)) == 1 else "changed"


def _candidates(points, text, prefer, loop):
    """Places for an edge's label: beside points along its path, the middle first."""
    other = "end" if prefer == "start" else "start"
    if loop:  # right of the loop, then above and below the node's right end
        (x0, y0), mid = points[0], points[len(points) // 2]
        yield Label(mid[0] + LABEL_GAP, mid[1] + 4, "start", text)
        for dy in (-24, 30, -40, 46):
            yield Label(mid[0] + LABEL_GAP, mid[1] + dy, "start", text)
        return
    n = len(points) - 1
    for f in (0.5, 0.42, 0.58, 0.34, 0.66, 0.26, 0.74, 0.18, 0.82):
        x, y = points[round(f * n)]
        for side in (prefer, other):
            yield Label(x + LABEL_GAP, y + 4, "start", text) if side == "start" else Label(x - LABEL_GAP, y + 4, "end", text)
    for f in (0.5, 0.34, 0.66):
        x, y = points[round(f * n)]
        for dx in (LABEL_GAP + 16, LABEL_GAP + 36):
            yield Label(x + dx, y + 4, "start", text)
            yield Label(x - dx, y + 4, "end", text)


def _edges(lay, uid, taken, edge_marks):
    parts = []
    for e in lay.edges:
        d, label = lay.routes[id(e)]
        keys = [edge_key(e.source, ev, e.target) for ev in e.events]
        is_taken = any(k in taken for k in keys)
        mark = edge_mark([edge_marks.get(k) for k in keys])
        cls = "edge taken" if is_taken else "edge"
        if e.back:
            cls += " back"
        marker = f"url(#{uid}-t)" if is_taken else f"url(#{uid}-a)"
        title = ""
        if mark:
            cls += f" mark-{mark}"
            marker = marker if is_taken else f"url(#{uid}-{mark})"
            said = [f"{_event_text(ev) if ev.strip() else '(no event)'} {edge_marks[k]}"
                    for ev, k in zip(e.events, keys) if edge_marks.get(k)]
            title = f"<title>{escape(f'{e.source} → {e.target}: ' + ', '.join(said))}</title>"
        end = f'marker-start="{marker}"' if e.back else f'marker-end="{marker}"'
        text = "" if label is None else \
            f'<text x="{label.x:.1f}" y="{label.y:.1f}" text-anchor="{label.anchor}">{escape(label.text)}</text>'
        parts.append(f'<g class="{cls}" data-edge="{escape(" ".join(keys))}">{title}<path d="{d}" {end}/>{text}</g>')
    return parts


def _node(n, is_current, is_visited, count, failed=False, mark=None):
    classes = ["node"]
    if mark:
        classes.append(f"mark-{mark}")
    if n.initial:
        classes.append("initial")
    if n.final:
        classes.append("final")
    if is_visited:
        classes.append("visited")
    if is_current:
        classes.append("current")
        if failed:
            classes.append("failed")
    x, y = n.left, n.y - NODE_H / 2
    title = n.label + ((" (current, failed)" if failed else " (current)") if is_current else "") + (f": {count} runs" if count else "")
    if mark:
        title += f" ({mark})"
    parts = [f'<g class="{" ".join(classes)}" data-state="{escape(n.id)}"><title>{escape(title)}</title>']
    if n.initial:
        parts.append(f'<circle class="start" cx="{n.x:.1f}" cy="{y - 26:.1f}" r="6"/>'
                     f'<path class="start-line" d="M{n.x:.1f},{y - 20:.1f} L{n.x:.1f},{y - 2:.1f}"/>')
    parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{n.w:.1f}" height="{NODE_H}" rx="9"/>')
    if n.final:
        parts.append(f'<rect class="inner" x="{x + 3:.1f}" y="{y + 3:.1f}" width="{n.w - 6:.1f}" '
                     f'height="{NODE_H - 6}" rx="7"/>')
    parts.append(f'<text x="{n.x:.1f}" y="{n.y + 4.5:.1f}" text-anchor="middle">{escape(n.label)}</text>')
    if mark:  # in the place kept for a count (no label is placed there)
        cx, cy = n.right - 4, y
        parts.append(f'<g class="mark-badge"><circle cx="{cx:.1f}" cy="{cy:.1f}" r="10"/>'
                     f'<text x="{cx:.1f}" y="{cy + 4.5:.1f}" text-anchor="middle">{MARKS[mark]}</text></g>')
    elif count:
        label = f"{count:,}"
        w = max(22.0, len(label) * 7.0 + 12)
        cx, cy = n.right - 4, y
        parts.append(f'<g class="count"><rect x="{cx - w / 2:.1f}" y="{cy - 10:.1f}" width="{w:.1f}" height="20" '
                     f'rx="10"/><text x="{cx:.1f}" y="{cy + 4:.1f}" text-anchor="middle">{escape(label)}</text></g>')
    parts.append("</g>")
    return "".join(parts)
