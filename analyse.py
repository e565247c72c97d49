"""
Where a trained model computes: the ablations and the PCA of the papers, by hand, on the model's hooks.

    python analyse.py                                        # the shipped 5-digit adder, see DEFAULT_CHECKPOINT
    python analyse.py checkpoints/sub_d6_l2_h3_t10K_s1.pt --only positions nodes maps

This file holds the measuring kit; `python analyse.py` runs every step of report.py on a checkpoint and
writes out/<model name>/report.md with its figures and the numbers as JSON.
  nodes       one Node type (position, layer, head or MLP): its name, where it lives (hook name and index)
              and node lists (nodes.json, in the reference notebook's `_tags.json` layout and the successor's)
  questions   the varied question set, per-operation samples, and scoring (a question fails when its
              mean answer loss is above 0.01 and an answer token is wrong: "Understanding Addition in
              Transformers", the notebook's ablation part)
  ablations   per-layer means, the one hook that replaces an activation, position ablation (every layer
              at one position), node ablation (a head's hook_z or an MLP's hook_post) and the useful
              nodes with the reference's tags (FailPerc, Impact, complexity classes, Attn)
  PCA         principal components by SVD (torch.linalg) and a cross-validated linear discriminant that
              says whether classes separate in the top components (by hand too, torch.linalg.solve)
Choices that differ from the reference notebooks: means are per layer (the notebook used layer 0's for
every layer); position ablation covers every layer; a question counts as broken by an ablation only if
the intact model answered it (otherwise one wrong answer makes every node look useful).
Left out on purpose: the notebook's one Impact tag per distinct failing pattern (a node gets one tag
with the union of the answer digits it breaks, which is what the impact map shows).
"""
import functools
import json
import os
import re
import sys
from typing import NamedTuple

import torch
from tqdm import tqdm

import data
import evaluate

DEFAULT_CHECKPOINT = os.path.join("checkpoints", "add_d5_l2_h3_t6K_s1.pt")  # the shipped 5-digit adder (seed 1)
FAIL_LOSS = 0.01  # a question fails if its mean answer loss is above this AND an answer token is wrong
MAJOR = {"S": "Add", "M": "Sub", "N": "Neg"}  # complexity class -> tag prefix: Add.S2, Sub.M1, Neg.N2

# ----------------------------------------------------------------------------- positions and nodes


def position_names(n_digits, task="mix"):
    """['D4'..'D0', '+', "D'4".."D'0", '=', 'sign', 'A5'..'A0'] for 5 digits: the token at each position.
    The operator is '+' or '-' for a one-operation model, 'op' for a mixed one."""
    n, op = n_digits, {"add": "+", "sub": "-"}.get(task, "op")
    return ([f"D{i}" for i in range(n - 1, -1, -1)] + [op] + [f"D'{i}" for i in range(n - 1, -1, -1)]
            + ["=", "sign"] + [f"A{i}" for i in range(n, -1, -1)])


def answer_labels(n_digits):
    """Impact labels of the n+2 answer tokens, high to low: the sign counts as digit n+1, as in the
    reference notebook's Impact tags: ['6', '5', .., '0'] for 5 digits."""
    return [str(n_digits + 1 - i) for i in range(n_digits + 2)]


def impact_value(digits, n_digits):
    """Answer digits -> an Impact tag's value, high digit first: [5, 4, 3] -> 'A543' (the reference's
    form). When a label can have two figures (the sign of a 9-digit model is digit 10) the digits are
    comma-separated, 'A10,9,0', so 'A10' is digit ten alone and never digits one and zero."""
    digits = sorted(digits, reverse=True)
    return "A" + ("," if n_digits + 1 > 9 else "").join(map(str, digits))


def impact_digits(value, n_digits):
    """An Impact tag's value -> its answer digits: 'A543' -> [5, 4, 3]; 'A10,9' -> [10, 9] (9+ digits)."""
    body = value[1:]
    return [int(d) for d in (body.split(",") if n_digits + 1 > 9 else body) if d != ""]


class Node(NamedTuple):
    """One node of the analysis: a head, or a layer's MLP, at one position of the question.

    Node(14, 0, 1) is head 1 of layer 0 at position 14, named 'P14.L0.H1'; Node(14, 0, None) is layer 0's
    MLP there, 'P14.L0.MLP'. A head's activation is its output z, `blocks.{L}.attn.hook_z` (B, P, H, D), at
    [:, position, head]; an MLP's is its hidden activation, `blocks.{L}.mlp.hook_post` (B, P, M), at
    [:, position]. Nodes sort by position, then layer, then head, the MLP last (the reference's order)."""
    position: int
    layer: int
    head: int | None  # None = the layer's MLP

    @property
    def is_mlp(self) -> bool:
        return self.head is None

    @property
    def component(self) -> str:
        """The head or MLP without its position: 'L0H1' or 'L0MLP' (a row of the quanta maps)."""
        return f"L{self.layer}" + ("MLP" if self.is_mlp else f"H{self.head}")

    @property
    def name(self) -> str:
        """'P14.L0.H1' for a head, 'P14.L0.MLP' for an MLP."""
        return f"P{self.position}.L{self.layer}." + ("MLP" if self.is_mlp else f"H{self.head}")

    @property
    def hook_name(self) -> str:
        """Where the activation lives: 'blocks.{L}.attn.hook_z' (B, P, H, D) or 'blocks.{L}.mlp.hook_post' (B, P, M)."""
        return f"blocks.{self.layer}." + ("mlp.hook_post" if self.is_mlp else "attn.hook_z")

    @property
    def index(self) -> tuple:
        """The index after the batch axis: (position,) into hook_post, (position, head) into hook_z."""
        return (self.position,) if self.is_mlp else (self.position, self.head)

    def _key(self):
        return self.position, self.layer, 1 << 30 if self.head is None else self.head

    def __lt__(self, other):
        return self._key() < other._key()

    def __gt__(self, other):
        return self._key() > other._key()

    @classmethod
    def parse(cls, text: str) -> "Node":
        """'P14.L0.H1', 'P14L0H1' or 'P14.L0.MLP' -> Node. Raises ValueError naming the text otherwise."""
        m = re.fullmatch(r"P(\d+)\.?L(\d+)\.?(?:H(\d+)|(MLP))", str(text).strip())
        if not m:
            raise ValueError(f"{text!r} is not a node name like 'P14.L0.H1' or 'P14.L0.MLP'")
        return cls(int(m[1]), int(m[2]), None if m[4] else int(m[3]))


def _node_entry(entry, cfg):
    """One entry of a node list -> (Node, tags); ValueError (one line) for anything else."""
    if isinstance(entry, str):
        return Node.parse(entry), []
    if not isinstance(entry, dict) or not {"position", "layer"} <= set(entry):
        raise ValueError(f"{entry!r} is not a node: expected {{\"position\", \"layer\", \"head\", \"tags\"}}, "
                         f"{{\"position\", \"layer\", \"is_head\", \"num\"}} or a name like 'P14.L0.H1'")
    if "head" in entry:  # the reference's layout: head == n_heads is the MLP
        head = entry["head"]
        head = None if head == cfg.n_heads and type(head) is int else head
    elif "num" in entry:  # the successor's layout
        head = entry["num"] if entry.get("is_head", True) else None
    else:
        raise ValueError(f"{entry!r} is not a node: it has neither \"head\" nor \"num\"")
    values = [entry["position"], entry["layer"]] + ([] if head is None else [head])
    tags = entry.get("tags", [])
    if any(type(v) is not int for v in values) or not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise ValueError(f"{entry!r} is not a node: position, layer and head must be integers, tags strings")
    return Node(entry["position"], entry["layer"], head), list(tags)


def read_nodes(path, cfg) -> dict:
    """A node list file -> {Node: tags (list of str)}, in file order.

    Accepted: the reference's `_tags.json` layout [{"position", "layer", "head", "tags"}] (head == n_heads
    is the MLP), the successor's [{"position", "layer", "is_head", "num", "tags"}] and names ['P14.L0.H1'],
    each optionally under a "nodes" key. A node listed twice gets the union of its tags. Raises ValueError
    (one line naming the file) for an unreadable file, another layout, or a node outside the model `cfg`."""
    try:
        with open(path) as f:
            entries = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the node list ({type(e).__name__}: {e})") from None
    if isinstance(entries, dict) and "nodes" in entries:
        entries = entries["nodes"]
    if not isinstance(entries, list):
        raise ValueError(f"{path}: not a node list (expected a JSON list of nodes, or one under \"nodes\")")
    nodes = {}
    for entry in entries:
        try:
            node, tags = _node_entry(entry, cfg)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        if not (0 <= node.position < cfg.n_ctx and 0 <= node.layer < cfg.n_layers
                and (node.is_mlp or 0 <= node.head < cfg.n_heads)):
            raise ValueError(f"{path}: node {node.name} is not in this model ({cfg.n_ctx} positions, "
                             f"{cfg.n_layers} layers, {cfg.n_heads} heads)")
        nodes.setdefault(node, [])
        nodes[node] += [t for t in tags if t not in nodes[node]]
    return nodes


def write_json(path, obj):
    """Write `obj` as indented JSON, atomically: a crash leaves the old file or the new one, never half."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def node_records(nodes, cfg) -> list:
    """{Node: tags} (or an iterable of Nodes, without tags) -> the reference's layout as JSON-ready dicts
    [{"position", "layer", "head", "tags"}], head == cfg.n_heads for an MLP."""
    tagged = nodes if isinstance(nodes, dict) else {node: [] for node in nodes}
    return [dict(position=nd.position, layer=nd.layer, head=cfg.n_heads if nd.is_mlp else nd.head, tags=list(tags))
            for nd, tags in tagged.items()]


def write_nodes(path, nodes, cfg):
    """Write {Node: tags} (or Nodes) to `path` in the reference's layout (see node_records), atomically."""
    write_json(path, node_records(nodes, cfg))


def tag_values(tags, major):
    """The minors of the tags with this major: tag_values(['Attn.13=46', 'Attn.12=50'], 'Attn') -> ['13=46', '12=50']."""
    return [t[len(major) + 1:] for t in tags if t.startswith(major + ".")]

# ----------------------------------------------------------------------------- questions and scoring


def question_sets(task, n_digits, gen, size=512):
    """The varied set as {name: tokens (B, P)}: every named set of data.named_sets, and per operation one
    uniform random batch of `size` and one fully enriched batch (carry and borrow cascades made common)."""
    sets = dict(data.named_sets(task, n_digits))
    for op in evaluate.ops_of(task):
        sets[f"{op} random"] = data.random_batch(op, n_digits, size, gen, enrichment=False)
        x = torch.randint(0, 10, (size, n_digits), generator=gen)  # (B, n) digits
        y = torch.randint(0, 10, (size, n_digits), generator=gen)
        data.enrich(x, y, op, gen, p_batch=1.0)
        sets[f"{op} enriched"] = data.make_questions(data.value_of(x), data.value_of(y), op, n_digits)
    return sets


def varied_questions(task, n_digits, gen, size=512):
    """All of `question_sets` in one tensor (B, P)."""
    return torch.cat(list(question_sets(task, n_digits, gen, size).values()))


def sample_questions(task, n_digits, count, gen):
    """`count` questions per operation of `task` as training draws them (data.random_batch: one batch per
    operation, enriched or not by one coin): (count * operations, P)."""
    return torch.cat([data.random_batch(op, n_digits, count, gen) for op in evaluate.ops_of(task)])


def operation_classes(tokens, n_digits):
    """{'add': (B,) bool, 'sub': subtractions with answer >= 0, 'neg': answer < 0}, the classes present."""
    _, _, is_sub, _ = data.parse_questions(tokens, n_digits)
    negative = tokens[:, data.answer_slice(n_digits).start] == data.MINUS
    classes = {"add": ~is_sub, "sub": is_sub & ~negative, "neg": is_sub & negative}
    return {k: v for k, v in classes.items() if v.any()}


class Outcome(NamedTuple):
    fails: torch.Tensor  # (B,) bool: mean answer loss > FAIL_LOSS and at least one wrong answer token
    wrong: torch.Tensor  # (B, n+2) bool: which answer tokens (sign, A(n)..A0) are wrong
    nll: torch.Tensor    # (B, n+2) float64: the answer tokens' negative log-likelihoods (nats)

    @property
    def loss(self):
        return self.nll.mean(1)  # (B,) mean answer NLL


@torch.inference_mode()
def failures(model, tokens, n_digits, hooks=(), batch_size=4096):
    """Run the questions (B, P) with `hooks` [(hook name, fn)] attached and score them: an Outcome.
    The failure rule (loss above 0.01 and a wrong token) is the reference notebook's."""
    device = next(model.parameters()).device
    wrong, nll = [], []
    with model.hooks(list(hooks)):
        for chunk in tokens.split(batch_size):
            chunk = chunk.to(device)
            logits = model(chunk)[:, data.logit_slice(n_digits)]  # (b, n+2, V): the logits that are read
            wrong.append((logits.argmax(-1) != chunk[:, data.answer_slice(n_digits)]).cpu())
            nll.append(evaluate.answer_nll(logits, chunk, n_digits).cpu())
    wrong, nll = torch.cat(wrong), torch.cat(nll)
    return Outcome((nll.mean(1) > FAIL_LOSS) & wrong.any(1), wrong, nll)

# ----------------------------------------------------------------------------- means


@torch.inference_mode()
def layer_means(model, tokens, batch_size=4096):
    """The mean-ablation baselines, one per layer (the reference notebook reused layer 0's everywhere):
    {'blocks.L.hook_resid_post': (P, C), 'blocks.L.attn.hook_z': (P, H, D), 'blocks.L.mlp.hook_post': (P, M)}."""
    names = [f"blocks.{i}.{h}" for i in range(model.cfg.n_layers)
             for h in ("hook_resid_post", "attn.hook_z", "mlp.hook_post")]
    return mean_activations(model, tokens, names, batch_size)


@torch.inference_mode()
def mean_patterns(model, tokens, batch_size=4096):
    """Attention averaged over the questions: (L, H, P, P), query x key."""
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    return torch.stack(list(mean_activations(model, tokens, names, batch_size).values()))


@torch.inference_mode()
def mean_activations(model, tokens, names, batch_size=4096):
    """{hook name: its activation averaged over the questions (B, P) (the batch axis removed)}."""
    sums = {}

    def add(x, hook):  # sum over the question axis, chunk by chunk: memory stays small for any model
        sums[hook.name] = sums.get(hook.name, 0) + x.double().sum(0)

    device = next(model.parameters()).device
    with model.hooks([(name, add) for name in names]):
        for chunk in tokens.split(batch_size):
            model(chunk.to(device))
    return {name: (sums[name] / len(tokens)).float() for name in names}

# ----------------------------------------------------------------------------- ablation


def replace(x, hook, index, value):
    """The one ablation hook, for every layer, node and position: x[:, *index] = value, in place.
    index: (position,) into hook_resid_post (B, P, C) or hook_post (B, P, M), (position, head) into hook_z
    (B, P, H, D), (position, [neurons]) for some of an MLP's neurons."""
    x[(slice(None), *index)] = value
    return x


def node_hook(node: Node, means, kind):
    """(hook name, fn) that mean- or zero-ablates one node: a head at hook_z, an MLP at hook_post."""
    value = means[node.hook_name][node.index]  # (D,) for a head, (M,) for an MLP
    return node.hook_name, functools.partial(replace, index=node.index, value=value * (kind == "mean"))


def position_hooks(position, means, kind, n_layers):
    """Ablate the residual stream at `position` after every layer, each with its own layer's mean."""
    hooks = []
    for layer in range(n_layers):
        name = f"blocks.{layer}.hook_resid_post"
        value = means[name][position] * (kind == "mean")  # (C,)
        hooks.append((name, functools.partial(replace, index=(position,), value=value)))
    return hooks


def ablate_nodes(model, tokens, nodes, means, kind="mean"):
    """Score the questions (B, P) with all `nodes` mean- (or zero-) ablated together: an Outcome."""
    return failures(model, tokens, model.cfg.n_digits, [node_hook(nd, means, kind) for nd in nodes])


def describe_classes(broken, classes):
    """'S2=50% S1=10%': for each complexity class with broken questions, the share of its questions broken."""
    parts = []
    for c in classes[broken].unique().tolist():
        k, total = int((broken & (classes == c)).sum()), int((classes == c).sum())
        parts.append((-k, f"{data.COMPLEXITY[c]}={round(100 * k / total)}%"))
    return " ".join(p for _, p in sorted(parts))


def node_tags(broken, wrong, classes, n_digits):
    """The reference notebook's tags for a node whose ablation breaks the questions `broken` (B,) bool:
    FailPerc.<truncated %>, Impact.A<answer digits broken, high to low>, <Add|Sub|Neg>.<class> per class."""
    tags = [f"FailPerc.{100 * int(broken.sum()) // len(broken)}"]
    hit = wrong[broken].any(0)  # (n+2,)
    tags.append("Impact." + impact_value([int(a) for a, h in zip(answer_labels(n_digits), hit.tolist()) if h], n_digits))
    for c in sorted(set(classes[broken].tolist())):
        name = data.COMPLEXITY[c]
        tags.append(f"{MAJOR[name[0]]}.{name}")
    return tags


def attention_tags(patterns, node, top=4):
    """Attn.<key position>=<%> for the (up to) 4 keys a head's query at its position attends most, >= 1%."""
    row = patterns[node.layer, node.head, node.position]  # (P,) over keys
    weights, keys = row.topk(min(top, len(row)))
    percs = 100 * weights / row.sum()
    return [f"Attn.{k}={round(p)}" for k, p in zip(keys.tolist(), percs.tolist()) if p >= 1]


def position_ablation(model, tokens, means, kind, baseline, progress=False):
    """For every position, the questions (B,) that break when it is ablated in every layer: (P, B) bool."""
    cfg = model.cfg
    rows = []
    for pos in tqdm(range(cfg.n_ctx), desc="positions", disable=not progress, mininterval=0.5):
        out = failures(model, tokens, cfg.n_digits, position_hooks(pos, means, kind, cfg.n_layers))
        rows.append(out.fails & ~baseline.fails)
    return torch.stack(rows)


def find_nodes(model, tokens, positions, means, patterns, kind, baseline, progress=False):
    """Ablate every head and MLP at each useful position, one forward pass per node over all questions.
    Returns the useful nodes (those that break at least one question) with their tags: {Node: tags}."""
    cfg = model.cfg
    classes = data.complexity(tokens, cfg.n_digits)
    cells = [Node(p, layer, h) for p in positions for layer in range(cfg.n_layers) for h in [*range(cfg.n_heads), None]]
    nodes = {}
    for node in tqdm(cells, desc="nodes", disable=not progress, mininterval=0.5):
        out = ablate_nodes(model, tokens, [node], means, kind)
        broken = out.fails & ~baseline.fails
        if broken.any():
            tags = node_tags(broken, out.wrong, classes, cfg.n_digits)
            if not node.is_mlp:
                tags += attention_tags(patterns, node)
            nodes[node] = tags
    return nodes

# ----------------------------------------------------------------------------- PCA by hand


def pca(X: torch.Tensor, k: int):
    """X (N, C) -> (projections (N, k), components (k, C), explained-variance ratios (k,)).
    Centre, then SVD: the right singular vectors are the principal axes, S^2 their variances."""
    Xc = X - X.mean(0)
    _, S, Vh = torch.linalg.svd(Xc, full_matrices=False)  # S: (min(N, C),), Vh: (min(N, C), C)
    var = S.pow(2)
    return Xc @ Vh[:k].T, Vh[:k], var[:k] / var.sum().clamp_min(1e-30)


def lda_accuracy(Z, labels, folds=5, seed=0, ridge=1e-3):
    """Cross-validated accuracy (0..1) of a linear discriminant predicting `labels` (N,) from points Z (N, d).

    Each class c gets its mean mu_c; all share the pooled within-class covariance S (d, d), so elongated
    but parallel clusters separate where a nearest-centroid rule would not. A point x goes to the class
    maximising x S^-1 mu_c - mu_c S^-1 mu_c / 2 + log(prior_c) (Fisher's linear discriminant, as in
    Hastie, Tibshirani and Friedman, "The Elements of Statistical Learning", section 4.3). S gets
    `ridge` times its mean variance on the diagonal so that a flat cluster cannot make it singular.
    Folds: `folds` interleaved slices of a seeded permutation; each point is scored once, by a
    discriminant fitted without it."""
    Z = Z.double()
    perm = torch.randperm(len(Z), generator=torch.Generator().manual_seed(seed))
    classes, correct = labels.unique(), 0
    for f in range(folds):
        test = perm[f::folds]
        fit = torch.ones(len(Z), dtype=torch.bool)
        fit[test] = False
        mus = torch.stack([Z[fit & (labels == c)].mean(0) for c in classes])        # (K, d)
        centred = Z[fit] - mus[(labels[fit, None] == classes).float().argmax(1)]     # (N_fit, d)
        S = centred.T @ centred / max(1, len(centred) - len(classes))               # (d, d)
        S = S + ridge * S.diagonal().mean().clamp_min(1e-12) * torch.eye(len(S), dtype=S.dtype)
        W = torch.linalg.solve(S, mus.T)                                            # (d, K): S^-1 mu_c
        prior = torch.stack([(labels[fit] == c).double().mean() for c in classes])  # (K,)
        scores = Z[test] @ W - 0.5 * (mus * W.T).sum(1) + prior.log()               # (N_test, K)
        correct += int((classes[scores.argmax(1)] == labels[test]).sum())
    return correct / len(Z)


if __name__ == "__main__":
    import report  # the command: report.py builds on this file, so it is imported only when run as a script
    sys.exit(report.main())
