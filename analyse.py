"""
Open a trained model and find where it computes: one command from a checkpoint to a readable report.

    python analyse.py                                   # the 5-digit addition checkpoint in checkpoints/
    python analyse.py checkpoints/sub_d6_l2_h3_t10K_s1.pt --only positions nodes maps

Steps (each `step_<name>(run)` returns a Markdown section; `--only` picks some, in this order):
  accuracy   right answers per named question set and per complexity class (SPEC 4.4)
  attention  mean attention of every head, and for a few example questions (SPEC 4.17)
  positions  mean-ablate the residual stream at one position in every layer -> the useful positions (4.6)
  nodes      mean-ablate each head (hook_z) and each MLP (hook_post) at each useful position -> the useful
             nodes, tagged with failure %, complexity classes, answer impact and attention -> nodes.json (4.5, 4.7)
  maps       quanta maps: failure %, attention, minimum complexity per operation, answer impact (4.10)
  pca, framework, algorithm, neurons: from algorithm.py (issue 5), if it is there
Everything goes to out/<model name>/: report.md (every table, figure and a paragraph per step), PNGs, nodes.json.
This file holds the machinery (questions, scoring, means, ablation hooks, useful nodes) and the command line;
report.py runs the steps and writes their text, plots.py draws the figures.

Fixed from the reference (SPEC decision 4): ablation means are per layer (not layer 0's for every layer);
position ablation covers every layer; a question counts as broken by an ablation only if the intact model
answered it (otherwise a model with one wrong answer makes every node look useful); palettes never overflow.
Left out on purpose: the reference's one Impact tag per distinct failing pattern (a node gets one tag with
the union of the answer digits it breaks, which is what the impact map shows) and its MLP viewer widget.
"""
import functools
import glob
import json
import os
import sys
import time
from typing import NamedTuple

import torch
from tqdm import tqdm

import data
import plots
import evaluate
import train
from model import pick_device

FAIL_LOSS = 0.01  # SPEC 4.5: a question fails if its mean answer loss is above this AND a token is wrong
STEPS = ["accuracy", "attention", "positions", "nodes", "maps", "pca", "framework", "algorithm", "neurons",
         "report"]
DEFAULT = ["accuracy", "attention", "positions", "nodes", "maps", "pca", "algorithm", "neurons", "report"]
MAJOR = {"S": "Add", "M": "Sub", "N": "Neg"}  # complexity class -> tag prefix: Add.S2, Sub.M1, Neg.N2

# ----------------------------------------------------------------------------- names


def position_names(n_digits, task="mix"):
    """['D4'..'D0', '+', "D'4".."D'0", '=', 'sign', 'A5'..'A0'] for 5 digits: the token at each position.
    The operator is '+' or '-' for a one-operation model, 'op' for a mixed one."""
    n, op = n_digits, {"add": "+", "sub": "-"}.get(task, "op")
    return ([f"D{i}" for i in range(n - 1, -1, -1)] + [op] + [f"D'{i}" for i in range(n - 1, -1, -1)]
            + ["=", "sign"] + [f"A{i}" for i in range(n, -1, -1)])


def answer_labels(n_digits):
    """Impact labels of the n+2 answer tokens, high to low: the sign counts as digit n+1 (SPEC 4.5)."""
    return [str(n_digits + 1 - i) for i in range(n_digits + 2)]


def node_name(node, cfg):
    """'P14.L0.H1' for a head, 'P14.L0.MLP' for an MLP (head == n_heads)."""
    return f"P{node['position']}.L{node['layer']}.{row_name(node['layer'], node['head'], cfg)[2:]}"


def row_name(layer, head, cfg):
    return f"L{layer}" + ("MLP" if head == cfg.n_heads else f"H{head}")


def tag_values(node, major):
    """The minors of a node's tags with this major: tag_values(n, 'Attn') -> ['13=46', '12=50']."""
    return [t[len(major) + 1:] for t in node["tags"] if t.startswith(major + ".")]


def write_nodes(path, nodes):
    with open(path, "w") as f:
        json.dump(nodes, f, indent=1)


def read_nodes(path):
    """nodes.json: a list of {"position", "layer", "head", "tags"}; head == n_heads means the MLP."""
    with open(path) as f:
        return json.load(f)

# ----------------------------------------------------------------------------- questions and scoring


def question_sets(task, n_digits, gen, size=512):
    """The varied set (SPEC 4.3) as {name: tokens}: every named set, and per operation one random batch of
    `size` and one fully enriched batch (carry and borrow cascades made common)."""
    sets = dict(data.named_sets(task, n_digits))
    for op in evaluate.ops_of(task):
        sets[f"{op} random"] = data.random_batch(op, n_digits, size, gen, enrichment=False)
        x = torch.randint(0, 10, (size, n_digits), generator=gen)  # (B, n) digits
        y = torch.randint(0, 10, (size, n_digits), generator=gen)
        data.enrich(x, y, op, gen, p_batch=1.0)
        sets[f"{op} enriched"] = data.make_questions(data.value_of(x), data.value_of(y), op, n_digits)
    return sets


def varied_questions(task, n_digits, gen, size=512):
    """All of `question_sets` in one tensor (B, n_ctx)."""
    return torch.cat(list(question_sets(task, n_digits, gen, size).values()))


class Outcome(NamedTuple):
    fails: torch.Tensor  # (B,) bool: mean answer loss > FAIL_LOSS and at least one wrong answer token
    wrong: torch.Tensor  # (B, n+2) bool: which answer tokens (sign, A(n)..A0) are wrong
    loss: torch.Tensor   # (B,) float64: mean answer NLL


@torch.inference_mode()
def failures(model, tokens, n_digits, hooks=(), batch_size=4096):
    """Run the questions with `hooks` [(hook name, fn)] attached and score them (SPEC 4.5)."""
    device = next(model.parameters()).device
    wrong, loss = [], []
    with model.hooks(list(hooks)):
        for chunk in tokens.split(batch_size):
            chunk = chunk.to(device)
            logits = model(chunk)[:, data.logit_slice(n_digits)]  # (b, n+2, V): the logits that are read
            wrong.append((logits.argmax(-1) != chunk[:, data.answer_slice(n_digits)]).cpu())
            loss.append(evaluate.answer_nll(logits, chunk, n_digits).mean(1).cpu())
    wrong, loss = torch.cat(wrong), torch.cat(loss)
    return Outcome((loss > FAIL_LOSS) & wrong.any(1), wrong, loss)


@torch.inference_mode()
def layer_means(model, tokens, batch_size=4096):
    """The mean-ablation baselines, one per layer (the reference reused layer 0's everywhere):
    {'blocks.L.hook_resid_post': (P, C), 'blocks.L.attn.hook_z': (P, H, D), 'blocks.L.mlp.hook_post': (P, M)}."""
    names = [f"blocks.{i}.{h}" for i in range(model.cfg.n_layers)
             for h in ("hook_resid_post", "attn.hook_z", "mlp.hook_post")]
    return _mean_activations(model, tokens, names, batch_size)


@torch.inference_mode()
def mean_patterns(model, tokens, batch_size=4096):
    """Attention averaged over the questions: (L, H, P, P), query x key."""
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    return torch.stack(list(_mean_activations(model, tokens, names, batch_size).values()))


def _mean_activations(model, tokens, names, batch_size):
    sums = {}

    def add(x, hook):  # sum over the question axis, chunk by chunk: memory stays small for any model
        sums[hook.name] = sums.get(hook.name, 0) + x.double().sum(0)

    device = next(model.parameters()).device
    with model.hooks([(name, add) for name in names]):
        for chunk in tokens.split(batch_size):
            model(chunk.to(device))
    return {name: (sums[name] / len(tokens)).float() for name in names}

# ----------------------------------------------------------------------------- ablation


def replace(x, hook, position, head, value):
    """The one ablation hook, for every layer, head and position: x[:, position(, head)] = value."""
    if head is None:
        x[:, position] = value  # hook_post (B, P, M) or hook_resid_post (B, P, C)
    else:
        x[:, position, head] = value  # hook_z (B, P, H, D)
    return x


def node_hook(node, means, kind, cfg):
    """(hook name, fn) that mean- or zero-ablates one node: a head at hook_z, an MLP at hook_post."""
    layer, head, pos = node["layer"], node["head"], node["position"]
    if head == cfg.n_heads:
        name, head = f"blocks.{layer}.mlp.hook_post", None
        value = means[name][pos]  # (M,)
    else:
        name = f"blocks.{layer}.attn.hook_z"
        value = means[name][pos, head]  # (D,)
    return name, functools.partial(replace, position=pos, head=head, value=value * (kind == "mean"))


def position_hooks(position, means, kind, n_layers):
    """Ablate the residual stream at `position` after every layer, each with its own layer's mean."""
    hooks = []
    for layer in range(n_layers):
        name = f"blocks.{layer}.hook_resid_post"
        value = means[name][position] * (kind == "mean")  # (C,)
        hooks.append((name, functools.partial(replace, position=position, head=None, value=value)))
    return hooks


def ablate_nodes(model, tokens, nodes, means, kind="mean"):
    """Score the questions with all `nodes` ablated together: an Outcome."""
    return failures(model, tokens, model.cfg.n_digits, [node_hook(nd, means, kind, model.cfg) for nd in nodes])


def describe_classes(broken, classes):
    """'S2=50% S1=10%': for each complexity class with broken questions, the share of its questions broken."""
    parts = []
    for c in classes[broken].unique().tolist():
        k, total = int((broken & (classes == c)).sum()), int((classes == c).sum())
        parts.append((-k, f"{data.COMPLEXITY[c]}={round(100 * k / total)}%"))
    return " ".join(p for _, p in sorted(parts))


def node_tags(broken, wrong, classes, n_digits):
    """The reference's tags for a node whose ablation breaks the questions `broken` (B,) bool:
    FailPerc.<truncated %>, Impact.A<answer digits broken, high to low>, <Add|Sub|Neg>.<class> per class."""
    tags = [f"FailPerc.{100 * int(broken.sum()) // len(broken)}"]
    hit = wrong[broken].any(0)  # (n+2,)
    tags.append("Impact.A" + "".join(a for a, h in zip(answer_labels(n_digits), hit.tolist()) if h))
    for c in sorted(set(classes[broken].tolist())):
        name = data.COMPLEXITY[c]
        tags.append(f"{MAJOR[name[0]]}.{name}")
    return tags


def attention_tags(patterns, node, top=4):
    """Attn.<key position>=<%> for the (up to) 4 keys a head's query at its position attends most, >= 1%."""
    row = patterns[node["layer"], node["head"], node["position"]]  # (P,) over keys
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
    Returns the useful nodes (those that break at least one question) with their tags, as in nodes.json."""
    cfg = model.cfg
    classes = data.complexity(tokens, cfg.n_digits)
    cells = [dict(position=p, layer=layer, head=h) for p in positions for layer in range(cfg.n_layers)
             for h in range(cfg.n_heads + 1)]
    nodes = []
    for node in tqdm(cells, desc="nodes", disable=not progress, mininterval=0.5):
        out = ablate_nodes(model, tokens, [node], means, kind)
        broken = out.fails & ~baseline.fails
        if broken.any():
            tags = node_tags(broken, out.wrong, classes, cfg.n_digits)
            if node["head"] < cfg.n_heads:
                tags += attention_tags(patterns, node)
            nodes.append(dict(node, tags=tags))
    return nodes

# ----------------------------------------------------------------------------- the shared state of a run


class Run:
    """What the steps share, each computed once on first use."""

    def __init__(self, model, task, out, name, seed=0, kind="mean", size=512, steps=(), progress=True):
        self.model, self.cfg, self.task, self.out, self.name = model, model.cfg, task, out, name
        self.device = next(model.parameters()).device
        self.n, self.seed, self.kind, self.size, self.steps, self.progress = (
            model.cfg.n_digits, seed, kind, size, steps, progress)

    @functools.cached_property
    def sets(self):
        return question_sets(self.task, self.n, torch.Generator().manual_seed(self.seed), self.size)

    @functools.cached_property
    def tokens(self):
        return torch.cat(list(self.sets.values()))  # (B, P): the varied set

    @functools.cached_property
    def classes(self):
        return data.complexity(self.tokens, self.n)  # (B,) index into data.COMPLEXITY

    @functools.cached_property
    def means(self):
        return layer_means(self.model, self.tokens)

    @functools.cached_property
    def patterns(self):
        return mean_patterns(self.model, self.tokens)  # (L, H, P, P)

    @functools.cached_property
    def baseline(self):
        return failures(self.model, self.tokens, self.n)

    @functools.cached_property
    def broken_by_position(self):
        return position_ablation(self.model, self.tokens, self.means, self.kind, self.baseline, self.progress)

    @functools.cached_property
    def useful_positions(self):
        return self.broken_by_position.any(1).nonzero().flatten().tolist()

    @functools.cached_property
    def nodes(self):
        """From this run's `nodes` step, or nodes.json of an earlier run when that step is not asked for."""
        path = os.path.join(self.out, "nodes.json")
        if "nodes" not in self.steps and os.path.isfile(path):
            return read_nodes(path)
        nodes = find_nodes(self.model, self.tokens, self.useful_positions, self.means, self.patterns,
                           self.kind, self.baseline, self.progress)
        write_nodes(path, nodes)
        return nodes

    def save(self, fig, filename):
        """Save a figure in the output folder; returns the Markdown that shows it."""
        fig.savefig(os.path.join(self.out, filename), dpi=110, bbox_inches="tight")
        plots.plt.close(fig)
        return f"![{filename}]({filename})"

# ----------------------------------------------------------------------------- command line


def default_checkpoint(p):
    found = sorted(glob.glob(os.path.join("checkpoints", "add_d5_*.pt")))
    if not found:
        p.error("no checkpoint given and none matches checkpoints/add_d5_*.pt: train one with "
                "`python train.py --task add --digits 5` or name a checkpoint")
    return found[0]


def build_parser():
    p = train.Parser(prog="analyse.py",
                     description="Analyse a trained model: ablations, useful nodes, quanta maps, report.")
    p.add_argument("checkpoint", nargs="?", help="a .pt file (default: the first checkpoints/add_d5_*.pt)")
    p.add_argument("--out", help="output folder (default out/<model name>)")
    p.add_argument("--only", nargs="+", choices=STEPS, metavar="STEP",
                   help="run only these steps: " + ", ".join(STEPS) + " (the report is always rewritten)")
    p.add_argument("--task", choices=["add", "sub", "mix"],
                   help="the model's task; needed only for checkpoints that do not say (TransformerLens files)")
    p.add_argument("--seed", type=int, default=0, help="seed of the analysis questions (default 0)")
    p.add_argument("--ablation", choices=["mean", "zero"], default="mean",
                   help="replace an activation by its mean over the varied set (default) or by zero")
    p.add_argument("--questions", type=train.positive(int), default=512,
                   help="random questions per batch in the varied set: a plain and an enriched batch per "
                        "operation (default 512)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or mps")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def main(argv=None):
    import report  # the steps and their Markdown; imported here so report.py can import this module
    p = build_parser()
    args = p.parse_args(argv)
    path = args.checkpoint or default_checkpoint(p)
    try:
        device = pick_device(args.device)
    except ValueError as e:
        p.error(str(e))
    model, info, task = train.open_checkpoint(p, path, args.task, device)
    name = os.path.splitext(os.path.basename(path))[0]
    out = args.out or os.path.join("out", name)
    os.makedirs(os.path.join(out, "sections"), exist_ok=True)
    train.set_threads(model.cfg)
    print({**vars(args), "checkpoint": path, "task": task, "out": out, "threads": torch.get_num_threads()})
    steps = [s for s in STEPS if s in (args.only or DEFAULT)]
    run = Run(model, task, out, name, args.seed, args.ablation, args.questions, steps, not args.no_progress)
    run.info, run.checkpoint = info, path
    t_all = time.time()
    for step in steps:
        if step == "report":
            continue
        t0, cpu0 = time.time(), time.process_time()
        section = report.STEP_FUNCTIONS[step](run)
        section += f"\n\n_Step `{step}` took {time.time() - t0:.1f} s._\n"
        with open(os.path.join(out, "sections", f"{STEPS.index(step):02d}_{step}.md"), "w") as f:
            f.write(section)
        print(f"{step}: {time.time() - t0:.1f}s ({time.process_time() - cpu0:.1f}s CPU)", flush=True)
    report.write_report(run)
    print(f"wrote {os.path.join(out, 'report.md')} in {time.time() - t_all:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
