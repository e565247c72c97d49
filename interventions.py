"""
Interchange interventions, and the node-centric discovery of what each useful node computes.

    python analyse.py checkpoints/add_d5_l2_h3_t6K_s1.pt --only nodes algorithm

An intervention runs a *store* question, copies chosen nodes' activations (a head's hook_z[:, P, h] or
an MLP's hook_post[:, P]) into the run of an *alter* question, and reads the model's answer. A claim
"node N carries sub-task X of answer digit A_k" predicts, through framework.py, the exact answer: the
alter's, with digit k recomputed from the store's value of X. Store and alter differ only in X (the
digits X reads are re-drawn, every other digit of the alter is random: framework.make_pairs), so the
prediction differs from the alter's answer. Per test, over the pairs the unpatched model answers right:
  strong  the patched answer equals the prediction exactly (every answer token),
  weak    digit k becomes the predicted digit, but other answer tokens move too.
A claim holds when its share of pairs reaches the threshold (THRESHOLD) and two controls fail:
  decoy   the same node patched from a *decoy* store (the alter with every digit re-drawn except the
          ones X reads: it differs in other sub-tasks, not in X) must not give the prediction;
  unused  nodes whose ablation breaks nothing are put through the same tests; they must not pass.
Every useful node is tested on every sub-task of every answer digit it can reach (at or before the
position that predicts the digit), so a node that passes is also seen on its digit's other sub-tasks:
*specific* when it carries some of them, a *combiner* when it carries all. Where no single node
passes a claim, pairs of nodes at one position are tried ("Understanding Addition in Transformers",
section 5: two heads together do the base add).
Speed: tests first run on SCREEN pairs; only those that move digit k on at least half of them run on
the rest, and many tests share one forward pass (the alter batch is tiled, one tile per node set).
"""
import itertools
import random
import time
from functools import partial

import torch
from tqdm import tqdm

import data
import framework
import evaluate
from analyse import Node, tag_values

THRESHOLD = 0.9  # share of pairs a claim must pass; the controls' rates are reported beside it
SCREEN = 20      # pairs every test runs on first
SUCCESSOR = {"heads": 54, "MLPs": 0}  # % of useful nodes given a purpose by the successor library's search
# the sub-task families (framework.FAMILIES) searched for a model's task
FAMILIES_OF_TASK = {"add": ["add"], "sub": ["sub", "neg", "sign"], "mix": ["add", "sub", "neg", "sign", "operator"]}

# ----------------------------------------------------------------------------- nodes and interventions


def all_nodes(cfg):
    """Every Node (position, layer, head or MLP) of a model, for when no useful-node list is given."""
    return [Node(p, l, h) for p in range(cfg.n_ctx) for l in range(cfg.n_layers) for h in [*range(cfg.n_heads), None]]


def answer_position(k, n):
    """The position whose logits predict answer digit k (the sign, k = n+1, is predicted at `=`)."""
    return 3 * n + 2 - k


def _put(x, hook, patches, B):
    """The one patching hook: for tile i, copy the store activation into every listed site (in place)."""
    for i, idx, value in patches.get(hook.name, []):
        x[(slice(i * B, (i + 1) * B),) + idx] = value
    return x


def store_cache(model, store):
    """The activations interventions copy: {hook name: (B, P, ...)} for every hook_z and hook_post."""
    with torch.inference_mode():
        return model.run_with_cache(store, names_filter=lambda name: name.endswith(("attn.hook_z", "mlp.hook_post")))[1]


@torch.inference_mode()
def intervene(model, store, alter, node_sets, cache=None, rows=256):
    """Patch each node set (a list of lists of Nodes) from `store` into `alter` questions (both (B, P)).
    Returns predicted answer tokens (len(node_sets), B, n+2). `cache` (store_cache of the store) may be
    passed instead of `store` to reuse it. About `rows` questions go through one forward pass (on a CPU,
    batches of 128-256 questions ran 1.7x faster per question than batches of 1024: they stay in cache)."""
    n, B = model.cfg.n_digits, len(alter)
    cache = store_cache(model, store) if cache is None else cache
    chunk, out = max(1, rows // max(B, 1)), []
    for start in range(0, len(node_sets), chunk):
        sets = node_sets[start:start + chunk]
        patches = {}
        for i, nodes in enumerate(sets):
            for node in nodes:
                value = cache[node.hook_name][(slice(None),) + node.index]  # (B, D) or (B, M)
                patches.setdefault(node.hook_name, []).append((i, node.index, value))
        hook = partial(_put, patches=patches, B=B)
        logits = model.run_with_hooks(alter.repeat(len(sets), 1), [(name, hook) for name in patches])
        out.append(logits[:, data.logit_slice(n)].argmax(-1).view(len(sets), B, n + 2))
    return torch.cat(out) if out else torch.zeros(0, B, n + 2, dtype=torch.long)


def test_claim(model, store, alter, expected, nodes):
    """(passes, total): how many pairs give exactly the expected answer when `nodes` are patched."""
    pred = intervene(model, store, alter, [list(nodes)])[0]
    return int((pred == expected).all(1).sum()), len(alter)


def claim_pairs(model, task, k, n_pairs, gen):
    """Store/alter/expected for sub-task `task` of digit k, keeping only pairs the model gets right."""
    n = model.cfg.n_digits
    store, alter, expected = framework.make_pairs(task, k, n, n_pairs, gen)
    ok = evaluate.score(model, store, n, with_loss=False)[0] & evaluate.score(model, alter, n, with_loss=False)[0]
    return store[ok], alter[ok], expected[ok]

# ----------------------------------------------------------------------------- one claim


class Claim:
    """Sub-task `task` of answer digit k (from cascade column `column`, if given) with its pairs: store,
    alter, expected, chain (the expected answer if a cascade column's state reaches every digit up to
    A_k; else the same) and decoy stores, each (B, ...), all answered right by the model. Named 'A3.SA',
    or for a cascade sub-task from one column 'A5.ST(D2)'."""

    def __init__(self, model, task, k, n_pairs, gen, column=None):
        n = model.cfg.n_digits
        self.task, self.k, self.column, self.col = task, k, column, n + 1 - k  # col: answer token index
        self.name = f"A{k}.{task}" + ("" if column is None else f"(D{column})")
        self.position = answer_position(k, n)
        store, alter, expected, chain = framework.make_pairs(task, k, n, n_pairs, gen, column=column, chain=True)
        decoy = framework.make_decoys(task, k, n, alter, gen, column)
        ok = (evaluate.score(model, store, n, with_loss=False)[0] & evaluate.score(model, alter, n, with_loss=False)[0]
              & evaluate.score(model, decoy, n, with_loss=False)[0])
        self.store, self.alter, self.expected = store[ok], alter[ok], expected[ok]
        self.chain, self.decoy = chain[ok], decoy[ok]
        self.truth = self.alter[:, data.answer_slice(n)]
        self.caches = {}  # {decoy?: store_cache of the stores or of the decoys}

    def __len__(self):
        return len(self.alter)

    def measure(self, model, sets, rows, decoy=False):
        """Counts over the pairs `rows` (a slice) for each node set: (S, 3) int tensor of
        [exact answers, digit k as predicted, digit k moved from the alter's] (either prediction)."""
        if decoy not in self.caches:  # one run of all the stores (or decoys), sliced for each call
            self.caches[decoy] = store_cache(model, self.decoy if decoy else self.store)
        cache = {name: act[rows] for name, act in self.caches[decoy].items()}
        pred = intervene(model, None, self.alter[rows], sets, cache)                 # (S, b, n+2)
        exp, alt, truth, c = self.expected[rows], self.chain[rows], self.truth[rows], self.col
        exact = (pred == exp).all(2) | (pred == alt).all(2)                              # (S, b)
        digit = (pred[:, :, c] == exp[None, :, c]) | (pred[:, :, c] == alt[None, :, c])
        return torch.stack([exact.sum(1), digit.sum(1), (pred[:, :, c] != truth[None, :, c]).sum(1)], 1)


def run_tests(model, claim, sets, threshold, screen=SCREEN):
    """Test node sets on one claim: every set on the first `screen` pairs, the sets that move digit k
    on at least half of them on the rest, then the decoy control for every set that passes.
    Returns one dict per set: {pairs, strong, digit, moved, decoy_strong, decoy_digit, verdict} with
    counts of pairs and verdict 'strong', 'weak', 'decoy' (passed, but so did its decoy) or 'none'."""
    B = len(claim)
    if not sets:
        return []
    counts, pairs = claim.measure(model, sets, slice(0, screen)), torch.full((len(sets),), min(screen, B))  # (S, 3)
    go = (counts[:, 1] * 2 >= pairs).nonzero().flatten().tolist() if B > screen else []
    if go:
        counts[go] += claim.measure(model, [sets[i] for i in go], slice(screen, B))
        pairs[go] = B
    need = threshold * B
    passing = [i for i in range(len(sets)) if pairs[i] == B and counts[i, 1] >= need]
    decoys = dict(zip(passing, claim.measure(model, [sets[i] for i in passing], slice(0, B), decoy=True).tolist())
                  ) if passing else {}
    out = []
    for i, (exact, digit, moved) in enumerate(counts.tolist()):
        d = decoys.get(i, [0, 0, 0])
        verdict = "strong" if exact >= need else "weak" if i in decoys else "none"
        if verdict != "none" and d[0 if verdict == "strong" else 1] >= need:
            verdict = "decoy"
        out.append({"pairs": int(pairs[i]), "strong": exact, "digit": digit, "moved": moved,
                    "decoy_strong": d[0], "decoy_digit": d[1], "verdict": verdict})
    return out

# ----------------------------------------------------------------------------- discovery


def search_claim(model, task, k, candidates, n_pairs=100, seed=0, threshold=THRESHOLD, column=None):
    """The search discover runs, for one claim: every candidate Node alone, then (if none passes) pairs at
    one position of the nodes that move digit k. Returns [(node set, test result)], strong ones first."""
    claim = Claim(model, task, k, n_pairs, torch.Generator().manual_seed(seed), column)
    sets = [[nd] for nd in candidates if nd.position <= claim.position]
    found = list(zip(sets, run_tests(model, claim, sets, threshold)))
    if not any(r["verdict"] == "strong" for _, r in found):
        pairs = same_position_pairs([s[0] for s, r in found if r["moved"] * 4 >= r["pairs"]])
        found += list(zip(pairs, run_tests(model, claim, pairs, threshold)))
    return sorted(found, key=lambda f: (f[1]["verdict"] != "strong", -f[1]["strong"] / max(1, f[1]["pairs"])))


def same_position_pairs(nodes):
    """Every pair [a, b] of the Nodes that share a position (the paper's 'H0 + H2 together')."""
    return [list(p) for p in itertools.combinations(sorted(nodes), 2) if p[0].position == p[1].position]


def claims_of(task, n):
    """Every (sub-task, answer digit k, cascade column or None) of a task, in answer order (the sign and
    high digits first; a cascade's single columns after the whole cascade)."""
    order = [t for f in FAMILIES_OF_TASK[task] for t in framework.FAMILIES[f]]
    out = [(t, k, j) for t in order for k in framework.subtask_digits(t, n)
           for j in [None] + framework.cascade_columns(t, k)]
    return sorted(out, key=lambda c: (-c[1], order.index(c[0]), -1 if c[2] is None else -c[2]))


def discover(model, task, nodes=None, n_pairs=100, seed=0, progress=True, threshold=THRESHOLD, screen=SCREEN,
             n_controls=24, min_pairs=50):
    """Node-centric discovery: every useful node (a {Node: tags} dict from the nodes step, or a list; None =
    every node, then without the unused-node control) on every (sub-task, answer digit) of `task`, with
    `n_pairs` store/alter pairs each, pairs at one position (where no single node passes, and for nodes
    without a purpose alone), each pair's other sub-tasks of its digit when it passes, the decoy control
    for every pass and up to `n_controls` unused nodes (at positions that hold useful nodes) per claim.
    Claims with fewer than `min_pairs` pairs the model answers right are skipped. Returns a JSON-able dict:
    claims, tests (every result), nodes (each useful node's purposes and kind), shares, controls, seconds."""
    t0, cpu0 = time.time(), time.process_time()
    cfg, n = model.cfg, model.cfg.n_digits
    tags = nodes if isinstance(nodes, dict) else {nd: [] for nd in (all_nodes(cfg) if nodes is None else nodes)}
    useful = sorted(tags)
    held = {nd.position for nd in useful}
    unused = [nd for nd in all_nodes(cfg) if nd not in tags and nd.position in held] if nodes is not None else []
    gen, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    claims, objects, tests = [], {}, []

    def record(claim, sets, kind, results):
        for s, r in zip(sets, results):
            tests.append({"claim": claim.name, "nodes": [x.name for x in s], "kind": kind, **r})

    for t, k, j in tqdm(claims_of(task, n), desc="interventions", disable=not progress, mininterval=0.5):
        claim = Claim(model, t, k, n_pairs, gen, j)
        claims.append({"claim": claim.name, "digit": k, "subtask": t, "column": j, "family": framework.family_of(t),
                       "position": claim.position, "pairs": len(claim), "tested": len(claim) >= min_pairs})
        if len(claim) < min_pairs:  # a claim tested on a handful of pairs proves little
            continue
        objects[claim.name] = claim
        cands = [[nd] for nd in useful if nd.position <= claim.position]
        pool = [nd for nd in unused if nd.position <= claim.position]
        ctrl = [[nd] for nd in sorted(rng.sample(pool, min(n_controls, len(pool))))]
        res = run_tests(model, claim, cands + ctrl, threshold, screen)
        record(claim, cands, "useful", res[:len(cands)])
        record(claim, ctrl, "unused", res[len(cands):])
    # pairs at one position, of nodes that each move digit k on >= 25% of their pairs but do not pass
    # alone: for every claim no single node passes, and for the nodes that have no purpose alone
    alone = {t["nodes"][0] for t in tests if t["kind"] == "useful" and t["verdict"] == "strong"}
    for name, claim in objects.items():
        mine = [t for t in tests if t["claim"] == name and t["kind"] == "useful"]
        movers = [Node.parse(t["nodes"][0]) for t in mine if t["moved"] * 4 >= t["pairs"] and t["verdict"] != "strong"]
        solved = any(t["verdict"] == "strong" for t in mine)
        pairs = [p for p in same_position_pairs(movers) if not solved or not {x.name for x in p} <= alone]
        record(claim, pairs, "pair", run_tests(model, claim, pairs, threshold, screen))
    # specificity of the pairs that pass: the same pair on its digit's other sub-tasks
    done = {(c["claim"], tuple(c["nodes"])) for c in tests}
    for t in [t for t in tests if t["kind"] == "pair" and t["verdict"] == "strong"]:
        info = next(c for c in claims if c["claim"] == t["claim"])
        for c in claims:
            if (c["tested"] and c["digit"] == info["digit"] and c["family"] == info["family"]
                    and (c["claim"], tuple(t["nodes"])) not in done):
                pair = [Node.parse(x) for x in t["nodes"]]
                other = objects[c["claim"]]
                record(other, [pair], "pair_other", run_tests(model, other, [pair], threshold, screen))
                done.add((c["claim"], tuple(t["nodes"])))
    result = {"task": task, "n_digits": n, "threshold": threshold, "pairs_per_claim": n_pairs, "screen": screen,
              "seed": seed, "claims": claims, "tests": tests}
    result["nodes"] = _node_purposes(result, tags)
    result["shares"] = _shares(result["nodes"])
    result["controls"] = _controls(tests)
    result["seconds"], result["cpu_seconds"] = round(time.time() - t0, 1), round(time.process_time() - cpu0, 1)
    return result


def _kinds(result):
    """{(node names, claim): 'specific' | 'combiner'} for every strong pass: a combiner carries every
    tested sub-task of its digit's family (add, sub or neg: the four whole sub-tasks, not the single
    cascade columns; for A0 that is SA alone), a specific node only some. The sign and the operator
    are purposes of their own, always specific."""
    info = {c["claim"]: c for c in result["claims"]}
    strong = [t for t in result["tests"] if t["verdict"] == "strong" and t["kind"] != "unused"]
    tested, passed = {}, {}
    for c in result["claims"]:
        if c["tested"] and c["column"] is None:
            tested.setdefault((c["digit"], c["family"]), set()).add(c["subtask"])
    for t in strong:
        c = info[t["claim"]]
        if c["column"] is None:
            passed.setdefault((tuple(t["nodes"]), c["digit"], c["family"]), set()).add(c["subtask"])
    kinds = {}
    for t in strong:
        c = info[t["claim"]]
        every = passed.get((tuple(t["nodes"]), c["digit"], c["family"])) == tested.get((c["digit"], c["family"]))
        whole = every and c["family"] in ("add", "sub", "neg")
        kinds[(tuple(t["nodes"]), t["claim"])] = "combiner" if whole else "specific"
    return kinds


def _node_purposes(result, tags):
    """{node name: {is_mlp, strong, pairs, weak, kinds, category, attends}} for every useful node.
    category: 'specific' (a specific purpose alone), 'combiner' (only combiner purposes alone), 'pair'
    (a purpose only together with another node), 'weak' or 'none'."""
    kinds, out = _kinds(result), {}
    for nd, tg in tags.items():
        attends = [[int(v) for v in a.split("=")] for a in tag_values(tg, "Attn")]  # 'Attn' tags: 'key position=%'
        out[nd.name] = {"is_mlp": nd.is_mlp, "position": nd.position, "layer": nd.layer, "strong": [], "pairs": [],
                        "weak": [], "kinds": {}, "attends": attends}
    for t in result["tests"]:
        if t["kind"] not in ("useful", "pair") or t["verdict"] not in ("strong", "weak"):
            continue
        for name in t["nodes"]:
            e = out[name]
            if t["verdict"] == "weak":
                e["weak"].append(t["claim"])
            elif len(t["nodes"]) == 1:
                e["strong"].append(t["claim"])
                e["kinds"][t["claim"]] = kinds[(tuple(t["nodes"]), t["claim"])]
            else:
                partner = next(x for x in t["nodes"] if x != name)
                e["pairs"].append([t["claim"], partner, kinds[(tuple(t["nodes"]), t["claim"])]])
    for e in out.values():
        e["weak"] = list(dict.fromkeys(e["weak"]))
        e["category"] = ("specific" if "specific" in e["kinds"].values() else "combiner" if e["strong"]
                         else "pair" if e["pairs"] else "weak" if e["weak"] else "none")
    return out


def _shares(nodes):
    """Per kind of node (heads, MLPs): how many useful ones have a strong purpose, by category."""
    out = {}
    for kind, is_mlp in (("heads", False), ("MLPs", True)):
        group = [e for e in nodes.values() if e["is_mlp"] == is_mlp]
        cats = {c: sum(e["category"] == c for e in group) for c in ("specific", "combiner", "pair", "weak", "none")}
        strong = cats["specific"] + cats["combiner"] + cats["pair"]
        out[kind] = {"useful": len(group), "strong": strong, **cats,
                     "strong_percent": round(100 * strong / max(1, len(group)), 1),
                     "successor_percent": SUCCESSOR[kind]}
    return out


def _controls(tests):
    """The two controls' counts and rates (%), and the highest share of pairs any control test reached."""
    unused = [t for t in tests if t["kind"] == "unused"]
    passed = [t for t in tests if t["kind"] != "unused" and t["verdict"] in ("strong", "weak", "decoy")]
    fp = sum(t["verdict"] in ("strong", "weak") for t in unused)
    decoy = sum(t["verdict"] == "decoy" for t in passed)
    share = lambda k, t: t[k] / max(1, t["pairs"])  # noqa: E731
    return {"unused": {"tests": len(unused), "passed": fp, "rate": round(100 * fp / max(1, len(unused)), 2),
                       "max_share": round(max([share("digit", t) for t in unused], default=0), 3)},
            "decoy": {"tests": len(passed), "passed": decoy, "rate": round(100 * decoy / max(1, len(passed)), 2),
                      "max_share": round(max([share("decoy_digit", t) for t in passed], default=0), 3)}}


def algo_tags(result):
    """{Node: tags} from a discovery: 'Algo.A3.SA' (strong alone), 'Algo.A3.SA+P13L0H2' (with a partner at
    its position), 'AlgoWeak.A3.SA' (weak)."""
    tags = {}
    for name, e in result["nodes"].items():
        tg = [f"Algo.{c}" for c in e["strong"]] + [f"Algo.{c}+{p.replace('.', '')}" for c, p, _ in e["pairs"]]
        tags[Node.parse(name)] = tg + [f"AlgoWeak.{c}" for c in e["weak"]]
    return tags

# ----------------------------------------------------------------------------- the report's text
