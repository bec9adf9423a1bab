"""A workflow's state diagram as inline SVG, laid out in Python (no JavaScript needed to read it).

Layered top-to-bottom layout: states are ranked by their longest path from the initial state
(an edge that leads back is laid out reversed and drawn with its arrow pointing up), edges spanning several ranks get waypoints,
and each rank is ordered by the barycenter of its neighbours. The layout is computed once per
workflow class; drawing it marks the current, visited and counted states and taken transitions.
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
CHAR_W = 7.4           # average width of a 13px sans-serif character
LANE_GAP = 18

_ids = itertools.count(1)


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

    @property
    def ends(self):
        return (self.target, self.source) if self.back else (self.source, self.target)


@dataclass
class Layout:
    nodes: dict
    edges: list
    width: float
    height: float


def layout_of(states, transitions) -> Layout:
    """``states``: [(id, label, initial, final)], ``transitions``: [(source, event, target)]."""
    nodes = {sid: Node(sid, label, initial, final, w=max(108.0, len(label) * CHAR_W + 30))
             for sid, label, initial, final in states}
    merged: dict = {}
    for source, event, target in transitions:
        if source in nodes and target in nodes:
            merged.setdefault((source, target), []).append(event)
    edges = [Edge(s, t, events) for (s, t), events in merged.items()]
    _mark_back_edges(nodes, edges)
    _rank(nodes, edges)
    ranks = _add_dummies(nodes, edges)
    _order(nodes, edges, ranks)
    width = _place(nodes, edges, ranks)
    height = TOP + len(ranks) * (NODE_H + RANK_GAP) - RANK_GAP + MARGIN
    extra = max((n.right + 40 + len(" / ".join(e.events)) * CHAR_W * 0.85 for e in edges
                 if e.source == e.target for n in [nodes[e.source]]), default=0.0)
    return Layout(nodes, edges, max(width, extra), height)


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


def _place(nodes, edges, ranks) -> float:
    rows = []
    for rank in ranks:
        xs, x = [], 0.0
        for n in rank:
            xs.append(x + n.w / 2)
            x += n.w + NODE_GAP
        rows.append((rank, xs, x - NODE_GAP))
    width = max((w for _, _, w in rows), default=0.0)
    for i, (rank, xs, w) in enumerate(rows):
        shift = MARGIN + (width - w) / 2
        for n, x in zip(rank, xs):
            n.x, n.y = x + shift, TOP + i * (NODE_H + RANK_GAP) + NODE_H / 2
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
                low = rank[j - 1].right + NODE_GAP + n.w / 2 if j else MARGIN + n.w / 2
                n.x = max(want[j], low)
            for j in range(len(rank) - 2, -1, -1):  # then pull back what was pushed too far right
                n, nxt = rank[j], rank[j + 1]
                n.x = min(n.x, nxt.left - NODE_GAP - n.w / 2) if n.x + n.w / 2 + NODE_GAP > nxt.left else n.x
    left = min((n.left for n in nodes.values()), default=MARGIN)
    for n in nodes.values():
        n.x += MARGIN - left
    return max((n.right for n in nodes.values()), default=0.0) + MARGIN


@lru_cache(maxsize=256)
def _cached(cls) -> Layout:
    states = [(s.id, s.name, bool(s.initial), bool(s.final)) for s in cls.states_map.values()]
    transitions = [(s.id, t.event, target.id) for s in cls.states_map.values()
                   for t in s.transitions for target in t.targets]
    return layout_of(states, transitions)


def edge_key(source, event, target) -> str:
    return f"{source}|{event}|{target}"


def render(cls, *, current=(), visited=(), taken=(), counts=None, label="") -> Markup:
    """The SVG for ``cls``: ``current``/``visited`` state ids, ``taken`` edge keys, ``counts`` per state."""
    lay = _cached(cls)
    uid = f"d{next(_ids)}"
    current, visited, taken = set(current), set(visited), set(taken)
    counts = counts or {}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="diagram" viewBox="0 0 {lay.width:.0f} {lay.height:.0f}" '
           f'width="{lay.width:.0f}" height="{lay.height:.0f}" role="img" aria-label="{escape(label)}">',
           "<defs>",
           f'<marker id="{uid}-a" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrow"/></marker>',
           f'<marker id="{uid}-t" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrow taken"/></marker>',
           "</defs>"]
    out += _edges(lay, uid, taken)
    for n in lay.nodes.values():
        if not n.dummy:
            out.append(_node(n, n.id in current, n.id in visited, counts.get(n.id)))
    out.append("</svg>")
    return Markup("".join(out))


def _edges(lay, uid, taken):
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
    parts = []
    for e in lay.edges:
        keys = [edge_key(e.source, ev, e.target) for ev in e.events]
        is_taken = any(k in taken for k in keys)
        text = " / ".join(e.events)
        if e.source == e.target:
            s = nodes[e.source]
            x, y = s.right, s.y
            d = f"M{x:.1f},{y - 9:.1f} C{x + 34:.1f},{y - 26:.1f} {x + 34:.1f},{y + 26:.1f} {x + 1:.1f},{y + 9:.1f}"
            lx, ly, anchor = x + 30, y + 4, "start"
        else:
            top, bottom = nodes[e.chain[0]], nodes[e.chain[-1]]
            offset = port[(id(e), "out")]
            pts = [(top.x + offset, top.y + NODE_H / 2 + (1 if e.back else 0))]
            pts += [(nodes[d].x, nodes[d].y) for d in e.chain[1:-1]]
            pts.append((bottom.x + port[(id(e), "in")], bottom.y - NODE_H / 2 - (0 if e.back else 1)))
            d = f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"
            for (ax, ay), (bx, by) in zip(pts, pts[1:]):
                h = (by - ay) / 2
                d += f" C{ax:.1f},{ay + h:.1f} {bx:.1f},{by - h:.1f} {bx:.1f},{by:.1f}"
            (ax, ay), (bx, by) = pts[0], pts[1]
            lx, ly = (ax + bx) / 2, (ay + by) / 2 + 4
            lean = offset + (bx - ax) / 4
            pair = pairs[frozenset((e.source, e.target))]
            if len(pair) > 1:
                lean = -1e9 if port[(id(e), "out")] == min(port[(id(o), "out")] for o in pair) else 1e9
            anchor = "end" if lean < -2 else "start" if lean > 2 else "middle"
            lx += -5 if anchor == "end" else 5 if anchor == "start" else 0
        cls = "edge taken" if is_taken else "edge"
        if e.back:
            cls += " back"
        marker = f"url(#{uid}-t)" if is_taken else f"url(#{uid}-a)"
        end = f'marker-start="{marker}"' if e.back else f'marker-end="{marker}"'
        parts.append(f'<g class="{cls}" data-edge="{escape(" ".join(keys))}"><path d="{d}" {end}/>'
                     f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}">{escape(text)}</text></g>')
    return parts


def _node(n, is_current, is_visited, count):
    classes = ["node"]
    if n.initial:
        classes.append("initial")
    if n.final:
        classes.append("final")
    if is_visited:
        classes.append("visited")
    if is_current:
        classes.append("current")
    x, y = n.left, n.y - NODE_H / 2
    title = n.label + (" (current)" if is_current else "") + (f": {count} runs" if count else "")
    parts = [f'<g class="{" ".join(classes)}" data-state="{escape(n.id)}"><title>{escape(title)}</title>']
    if n.initial:
        parts.append(f'<circle class="start" cx="{n.x:.1f}" cy="{y - 26:.1f}" r="6"/>'
                     f'<path class="start-line" d="M{n.x:.1f},{y - 20:.1f} L{n.x:.1f},{y - 2:.1f}"/>')
    parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{n.w:.1f}" height="{NODE_H}" rx="9"/>')
    if n.final:
        parts.append(f'<rect class="inner" x="{x + 3:.1f}" y="{y + 3:.1f}" width="{n.w - 6:.1f}" '
                     f'height="{NODE_H - 6}" rx="7"/>')
    parts.append(f'<text x="{n.x:.1f}" y="{n.y + 4.5:.1f}" text-anchor="middle">{escape(n.label)}</text>')
    if count:
        label = f"{count:,}"
        w = max(22.0, len(label) * 7.0 + 12)
        cx, cy = n.right - 4, y
        parts.append(f'<g class="count"><rect x="{cx - w / 2:.1f}" y="{cy - 10:.1f}" width="{w:.1f}" height="20" '
                     f'rx="10"/><text x="{cx:.1f}" y="{cy + 4:.1f}" text-anchor="middle">{escape(label)}</text></g>')
    parts.append("</g>")
    return "".join(parts)
