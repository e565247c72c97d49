"""
Interchange interventions and the automatic search for which node computes which sub-task.

    python algorithm.py CHECKPOINT --only algorithm          # prints and saves the verified table

An intervention runs a *store* question, copies chosen nodes' activations (a head's hook_z[:, P, h] or
an MLP's hook_post[:, P]) into the run of an *alter* question, and reads the model's answer. A claim
"these nodes carry sub-task X of answer digit k" predicts, through framework.py, the exact answer:
the alter's, with digit k recomputed from the store's value of X. The store/alter pairs differ only in
X (framework.make_pairs), so the prediction differs from the alter's answer, and a claim passes only
if every pair gives exactly the predicted answer. Pairs the unpatched model gets wrong are dropped.

The search tries, for each digit and sub-task, every candidate node that can influence that digit
(its position is at or before the one predicting the digit), then pairs (two heads at one position,
and pairs of the best partial single nodes), and keeps the smallest sets that pass.
Many claims share one forward pass: the alter batch is tiled once per claim and each tile is patched
with its own node set. Left out on purpose: sets of three or more nodes (the search space explodes and
the 5-digit models need none).
"""
import itertools
from functools import partial

import torch
from tqdm import tqdm

import data
import framework
import evaluate

# ----------------------------------------------------------------------------- nodes


def node_name(node, n_heads) -> str:
    """(position, layer, head) -> 'P12.L0.H1'; head == n_heads is the MLP: 'P12.L0.MLP'."""
    p, l, h = node
    return f"P{p}.L{l}." + ("MLP" if h == n_heads else f"H{h}")


def all_nodes(cfg):
    """Every (position, layer, head-or-MLP) of a model, for when no useful-node list is given."""
    return [(p, l, h) for p in range(cfg.n_ctx) for l in range(cfg.n_layers) for h in range(cfg.n_heads + 1)]


def _site(node, n_heads):
    """Where a node's activation lives: (hook name, index tuple after the batch axis)."""
    p, l, h = node
    if h == n_heads:
        return f"blocks.{l}.mlp.hook_post", (p,)         # (B, P, M)
    return f"blocks.{l}.attn.hook_z", (p, h)            # (B, P, H, D)


def _is_site(name):
    return name.endswith("attn.hook_z") or name.endswith("mlp.hook_post")

# ----------------------------------------------------------------------------- interventions


def _put(x, hook, patches, B):
    """The one patching hook: for tile i, copy the store activation into every listed site."""
    x = x.clone()
    for i, idx, value in patches.get(hook.name, []):
        x[(slice(i * B, (i + 1) * B),) + idx] = value
    return x


@torch.inference_mode()
def intervene(model, store, alter, node_sets, cache=None, chunk=64):
    """Patch each node set (a list of lists of nodes) from `store` into `alter` questions (both (B, P)).
    Returns predicted answer tokens (len(node_sets), B, n+2). `cache` (from a run_with_cache of store
    restricted to hook_z / hook_post) may be passed to reuse it across calls."""
    n, H, B = model.cfg.n_digits, model.cfg.n_heads, len(alter)
    if cache is None:
        cache = model.run_with_cache(store, names=_is_site)[1]  # inside inference_mode: no graph
    out = []
    for start in range(0, len(node_sets), chunk):
        sets = node_sets[start:start + chunk]
        patches = {}
        for i, nodes in enumerate(sets):
            for node in nodes:
                name, idx = _site(node, H)
                patches.setdefault(name, []).append((i, idx, cache[name][(slice(None),) + idx]))
        hook = partial(_put, patches=patches, B=B)
        logits = model.run_with_hooks(alter.repeat(len(sets), 1), [(name, hook) for name in patches])
        out.append(logits[:, data.logit_slice(n)].argmax(-1).view(len(sets), B, n + 2))
    return torch.cat(out)


def test_claim(model, store, alter, expected, nodes):
    """(passes, total): how many pairs give exactly the expected answer when `nodes` are patched."""
    pred = intervene(model, store, alter, [list(nodes)])[0]
    return int((pred == expected).all(1).sum()), len(alter)


def claim_pairs(model, task, k, n_pairs, gen):
    """Store/alter/expected for sub-task `task` of digit k, keeping only pairs the model gets right."""
    n = model.cfg.n_digits
    store, alter, expected = framework.make_pairs(task, k, n, n_pairs, gen)
    ok = evaluate.score(model, store, n)[0] & evaluate.score(model, alter, n)[0]
    return store[ok], alter[ok], expected[ok]

# ----------------------------------------------------------------------------- discovery


def subtasks_of(task):
    """The sub-tasks searched for a model's task: addition SA SC ST; subtraction M*/N* and the sign."""
    add, sub = list(framework.ADD_TASKS), [p + s for p in "MN" for s in framework.SUB_TASKS] + ["SGN"]
    return {"add": add, "sub": sub, "mix": add + sub}[task]


def _search_one(model, store, alter, expected, k, candidates, max_movers):
    """Smallest passing node sets for one claim: singles, else pairs.
    Returns (passing sets, (best set tried, its passes), {node in a passing set: pairs it moves alone})."""
    n, B = model.cfg.n_digits, len(alter)
    col = n + 1 - k                                     # index of digit k in `sign A(n)..A0`
    with torch.inference_mode():
        cache = model.run_with_cache(store, names=_is_site)[1]
    sets = [[c] for c in candidates]
    pred = intervene(model, store, alter, sets, cache)  # (S, B, n+2)
    tried = list(zip(sets, (pred == expected).all(2).sum(1).tolist()))
    winners = [s for s, e in tried if e == B]
    moved = (pred[:, :, col] == expected[None, :, col]).sum(1)                    # (S,)
    alone = {c: int(m) for c, m in zip(candidates, moved)}  # pairs each node moves digit k on, alone
    if not winners:
        # pairs of nodes that each move digit k as predicted on their own at least once: this keeps
        # out "a node that nearly passes alone + a bystander that happens to fix one pair"
        movers = [sets[i][0] for i in moved.argsort(descending=True)[:max_movers].tolist() if moved[i] > 0]
        pairs = [list(p) for p in itertools.combinations(movers, 2)]
        if pairs:
            pred = intervene(model, store, alter, pairs, cache)
            tried += list(zip(pairs, (pred == expected).all(2).sum(1).tolist()))
            winners = [s for s, e in tried if e == B]
    # pairs whose weaker member does more on its own first: two partial nodes before a near-complete one
    winners.sort(key=lambda s: -min(alone[c] for c in s))
    return winners, max(tried, key=lambda t: t[1]), {c: alone[c] for s in winners for c in s}


def discover(model, task, nodes=None, n_pairs=100, seed=0, max_movers=24, min_pairs=20, progress=True):
    """For every answer digit and sub-task: the smallest node sets whose patch moves the answer exactly
    as the framework predicts on every pair. `nodes`: candidate (position, layer, head) tuples (default all).
    Returns rows {digit, subtask, sets, passed, total, best, best_passed}, sets as lists of nodes."""
    cfg, n = model.cfg, model.cfg.n_digits
    nodes = all_nodes(cfg) if nodes is None else nodes
    gen = torch.Generator().manual_seed(seed)
    claims = sorted(((t, k) for t in subtasks_of(task) for k in framework.subtask_digits(t, n)),
                    key=lambda c: (-c[1], subtasks_of(task).index(c[0])))  # answer order: high digit first
    rows = []
    for t, k in tqdm(claims, desc="interventions", disable=not progress, mininterval=0.5):
        store, alter, expected = claim_pairs(model, t, k, n_pairs, gen)
        last = 3 * n + 2 - k        # the position predicting digit k (the sign, k = n+1, at `=`)
        candidates = [c for c in nodes if c[0] <= last]
        row = {"digit": f"A{k}", "subtask": t, "sets": [], "passed": 0, "total": len(alter),
               "best": [], "best_passed": 0, "alone": {}}
        if len(alter) >= min_pairs and candidates:  # a claim tested on a handful of pairs proves little
            sets, (best, best_passed), alone = _search_one(model, store, alter, expected, k, candidates, max_movers)
            row.update(sets=sets, passed=len(alter) if sets else best_passed, best=best, best_passed=best_passed,
                       alone=alone)
        rows.append(row)
    return rows


def algo_tags(rows):
    """{node: ['Algo.A3.SA', ...]} for every node in a passing set."""
    tags = {}
    for r in rows:
        for s in r["sets"]:
            for node in s:
                tag = f"Algo.{r['digit']}.{r['subtask']}"
                if tag not in tags.setdefault(tuple(node), []):
                    tags[tuple(node)].append(tag)
    return tags


def _set_name(nodes, row, n_heads):
    """'P12.L0.H1' for one node; 'P13.L0.H0 (51) + P13.L0.H2 (6)' for a pair, with the pairs each moves alone."""
    if len(nodes) == 1:
        return node_name(nodes[0], n_heads)
    return " + ".join(f"{node_name(x, n_heads)} ({row['alone'][tuple(x)]})" for x in nodes)


def table(rows, n_heads, shown=4) -> str:
    """The markdown table 'digit | sub-task | node(s) | tests passed' (at most `shown` sets a row)."""
    lines = ["| digit | sub-task | node(s) | tests passed |", "|---|---|---|---|"]
    for r in rows:
        if r["sets"]:
            found = ", ".join(_set_name(s, r, n_heads) for s in r["sets"][:shown])
            found += f" (+{len(r['sets']) - shown} more sets)" if len(r["sets"]) > shown else ""
            lines.append(f"| {r['digit']} | {r['subtask']} | {found} | {r['passed']}/{r['total']} |")
        else:
            best = " + ".join(node_name(x, n_heads) for x in r["best"]) or "-"
            why = f"best: {best}" if r["total"] >= 20 else "too few pairs the model answers right"
            lines.append(f"| {r['digit']} | {r['subtask']} | none ({why}) | "
                         f"{r['best_passed']}/{r['total']} |")
    return "\n".join(lines)
