"""Why two contacts are one customer: the shortest chain of evidence between them.

Two contacts are linked by evidence when they hold the same email or phone number, or when a
recorded request carried an email of one and a phone number of the other (a merge's pair, which no
row holds). Links made before events were recorded may have neither: then a secondary's link to its
primary is the evidence of last resort, used only when nothing else connects the two.
"""

from collections import defaultdict, deque


def shortest_path(contacts, merges, start, goal):
    """[contact, evidence, contact, ...] from start to goal over the evidence; None if none links them."""
    by_id = {contact["id"]: contact for contact in contacts}
    if start not in by_id or goal not in by_id:
        return None
    edges = evidence_edges(contacts, merges)
    steps = breadth_first(edges, start, goal)
    if steps is None:
        steps = breadth_first(with_recorded_links(edges, contacts), start, goal)
    return None if steps is None else steps_with_contacts(steps, by_id, start)


def evidence_edges(contacts, merges):
    """{contact id: [(neighbour id, evidence)]} from shared values and merge pairs."""
    holders = defaultdict(list)
    for contact in contacts:
        for key in ("email", "phoneNumber"):
            if contact[key] is not None:
                holders[key, contact[key]].append(contact["id"])
    edges = defaultdict(list)
    for (key, value), ids in holders.items():
        connect_all(edges, ids, ids, {"kind": f"shared {key}", key: value})
    for merge in merges:
        pair = {"kind": "request", **{k: merge.get(k) for k in ("email", "phoneNumber", "requestId", "at")}}
        emails, phones = (
            holders[("email", merge.get("email"))],
            holders[("phoneNumber", merge.get("phoneNumber"))],
        )
        connect_all(edges, emails, phones, pair)
    return edges


def connect_all(edges, sources, targets, evidence):
    """An edge with evidence between every source and every other target, both ways."""
    for source in sources:
        for target in targets:
            if source != target:
                edges[source].append((target, evidence))
                edges[target].append((source, evidence))


def with_recorded_links(edges, contacts):
    """edges and, as the last resort, each secondary's link to its primary."""
    extended = defaultdict(list, {node: list(out) for node, out in edges.items()})
    for contact in contacts:
        if contact["linkedId"] is not None:
            connect_all(extended, [contact["id"]], [contact["linkedId"]], {"kind": "linked before events"})
    return extended


def breadth_first(edges, start, goal):
    """[(evidence, contact id)] from start to goal with the fewest steps, or None."""
    came_from = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            return unwound(came_from, goal)
        for neighbour, evidence in edges.get(node, ()):
            if neighbour not in came_from:
                came_from[neighbour] = (node, evidence)
                queue.append(neighbour)
    return None


def unwound(came_from, goal):
    """The steps that reached goal, from the start."""
    steps, node = [], goal
    while came_from[node] is not None:
        previous, evidence = came_from[node]
        steps.append((evidence, node))
        node = previous
    return steps[::-1]


def steps_with_contacts(steps, by_id, start):
    """The path as the API shows it: contacts and the evidence between them, alternating."""
    path = [{"contact": shown(by_id[start])}]
    for evidence, node in steps:
        path += [{"evidence": evidence}, {"contact": shown(by_id[node])}]
    return path


def shown(contact):
    """A contact as the path shows it."""
    return {key: contact[key] for key in ("id", "email", "phoneNumber")}
