"""
The analysis command and its report: `python analyse.py CHECKPOINT` runs `main` here, which runs the
steps in order on one `Run` and writes, in out/<model name>/, report.md (a section per step, each with a
paragraph that says in words what the numbers show for this model), the figures, and each step's
numbers as JSON (see STEPS).

    python analyse.py                                   # the shipped 5-digit adder (analyse.DEFAULT_CHECKPOINT)
    python analyse.py checkpoints/sub_d6_l2_h3_t10K_s1.pt --only positions nodes maps

This file writes the first sections (accuracy, attention, positions, nodes); plots.py draws the figures
and the quanta maps; algorithm.py runs the PCA, the verified algorithm and the neurons. The sentences are
generated from the measurements (which positions, which nodes, which digits), never copied from the
papers' findings, so they stay true for any checkpoint.
"""
import functools
import glob
import json
import os
import sys
import time

import torch

import algorithm
import data
import framework
import plots
import evaluate
import train
from analyse import (DEFAULT_CHECKPOINT, MAJOR, describe_classes, failures, find_nodes, impact_digits,
                     layer_means, mean_patterns, position_ablation, position_names, question_sets, read_nodes,
                     tag_values, write_json, write_nodes)
from model import pick_device
from plots import fail_perc, join

# ----------------------------------------------------------------------------- the shared state of a run


class Run:
    """What the steps share, each computed once on first use: the varied questions (B, P), their
    complexity classes, per-layer means, mean attention, the intact model's Outcome, the position
    ablation and the useful nodes. `settings` holds the command's sizes (questions, pairs,
    pca_questions, neuron_questions), seed, ablation kind and the steps asked for."""

    def __init__(self, model, task, out, name, settings, info=None, checkpoint=None):
        self.model, self.cfg, self.task, self.out, self.name = model, model.cfg, task, out, name
        self.device, self.n = next(model.parameters()).device, model.cfg.n_digits
        self.settings, self.info, self.checkpoint = settings, info or {}, checkpoint
        self.seed, self.kind, self.progress = settings["seed"], settings["ablation"], settings["progress"]

    @functools.cached_property
    def sets(self):
        return question_sets(self.task, self.n, torch.Generator().manual_seed(self.seed), self.settings["questions"])

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
        """{Node: tags}: from this run's `nodes` step, or nodes.json of an earlier run when that step is not asked for."""
        path = os.path.join(self.out, "nodes.json")
        if "nodes" not in self.settings["steps"] and os.path.isfile(path):
            return read_nodes(path, self.cfg)
        nodes = find_nodes(self.model, self.tokens, self.useful_positions, self.means, self.patterns,
                           self.kind, self.baseline, self.progress)
        write_nodes(path, nodes, self.cfg)
        return nodes

# ----------------------------------------------------------------------------- accuracy


def records(keys, rows):
    """Table rows as JSON-ready dicts: records(['set', 'questions'], [['Add.S0', 21]]) -> [{'set': 'Add.S0', ...}]."""
    return [dict(zip(keys, row)) for row in rows]


def table(header, rows):
    """A Markdown table from a header list and rows of values."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


def percent(k, total):
    """k of total as a % with two decimals: '99.50'."""
    return f"{100 * k / max(total, 1):.2f}"



# ----------------------------------------------------------------------------- accuracy


def step_accuracy(run):
    """Right answers on each named set and on fresh random and enriched questions, per set and per
    complexity class: markdown and {sets, classes, first_mistakes}."""
    sets = question_sets(run.task, run.n, torch.Generator().manual_seed(run.seed + 1), 4096)
    rows, by_class, wrong = [], {}, []
    for name, tokens in sets.items():
        ok, loss, pred = evaluate.score(run.model, tokens, run.n)
        rows.append([name, len(tokens), int(ok.sum()), percent(int(ok.sum()), len(tokens)), f"{loss.mean():.2e}"])
        if name.endswith(("random", "enriched")):
            for c, k, l in zip(data.complexity(tokens, run.n).tolist(), ok.tolist(), loss.tolist()):
                q, r, s = by_class.get(c, (0, 0, 0.0))
                by_class[c] = (q + 1, r + k, s + l)
        for i in (~ok).nonzero().flatten()[:5 - len(wrong)].tolist():
            q = data.decode(tokens[i])
            wrong.append(f"`{q[:2 * run.n + 1]} = {data.decode(pred[i])}` (expected `{q[2 * run.n + 2:]}`)")
    total, right = sum(r[1] for r in rows), sum(r[2] for r in rows)
    enriched = {"add": "summing to 9", "sub": "with equal digits", "mix": "summing to 9 or with equal digits"}
    classes = [[data.COMPLEXITY[c], q, r, percent(r, q), f"{s / q:.2e}"] for c, (q, r, s) in sorted(by_class.items())]
    bad = [c[0] for c in classes if c[2] < c[1]]
    text = (f"The model answers {right:,} of {total:,} questions correctly ({percent(right, total)}%): the named "
            f"sets of the reference, edge cases generated by rule (`*.rule`), and per operation 4,096 uniform "
            f"random questions and 4,096 enriched ones (many columns {enriched[run.task]}, so cascades are "
            f"common). ")
    if right == total:
        text += ("It makes no mistake on any class, so every failure in the ablations below is caused by "
                 "the ablation, not by the model.")
    else:
        text += (f"Its mistakes fall in the classes {join(bad) or 'of the named sets'}; the ablations below "
                 f"count only questions that the intact model answers correctly. First mistakes: "
                 + "; ".join(wrong) + ".")
    head = ["set", "questions", "correct", "%", "mean loss"]
    found = {"sets": records(["set", "questions", "correct", "percent", "mean_loss"], rows),
             "classes": records(["class", "questions", "correct", "percent", "mean_loss"], classes),
             "first_mistakes": wrong}
    return "\n\n".join(["## Accuracy by complexity", text, table(head, rows),
                        "Fresh questions by complexity class (S: addition carries, M: subtraction borrows, "
                        "N: negative answers; the number is the length of the cascade):",
                        table(["class"] + head[1:], classes)]), found

# ----------------------------------------------------------------------------- attention


def examples(run, k=3):
    """A plain random question and, per operation, the hardest question (highest complexity) of the varied set."""
    picks = [run.sets[f"{evaluate.ops_of(run.task)[0]} random"][0]]
    for op in evaluate.ops_of(run.task):
        tokens = run.sets[f"{op} enriched"]
        picks.append(tokens[data.complexity(tokens, run.n).argmax()])
    return picks[:k]


def focus(row, names, threshold=0.2):
    """The names of the keys holding at least `threshold` of one query's attention, strongest first."""
    keys = [k for k in row.argsort(descending=True).tolist() if row[k] >= threshold][:3]
    return " ".join(names[k] for k in keys) or "spread"


def digit_of(name):
    """'D3' or "D'3" -> 3; any other position -> None."""
    return int(name.lstrip("D'")) if name.startswith("D") else None


def step_attention(run):
    """Mean attention of every head and the attention of a few example questions: markdown and
    {positions, mean_pattern (L, H, P, P) query x key, focus per head and query, staircase heads}."""
    cfg, names = run.cfg, position_names(run.n, run.task)
    md = ["## Attention patterns",
          plots.save(plots.attention_grid(run.patterns, names, f"{run.name}: attention averaged over "
                                          f"{len(run.tokens):,} questions"), run.out, "attention_mean.png")]
    for i, q in enumerate(examples(run)):
        with torch.inference_mode():
            _, cache = run.model.run_with_cache(q[None].to(run.device), names_filter=lambda nm: nm.endswith("hook_pattern"))
        pattern = torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0] for layer in range(cfg.n_layers)])
        text = data.decode(q)
        labels = [ch if nm == ch else f"{nm} {ch}" for nm, ch in zip(names, text)]  # 'D4 3', '+', 'A5 1'
        md.append(plots.save(plots.attention_grid(pattern, labels, f"attention for {text}"), run.out, f"attention_q{i}.png"))
    queries = list(range(data.logit_slice(run.n).start, data.logit_slice(run.n).stop))
    rows, stairs = [], []
    for layer in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            tops = [focus(run.patterns[layer, h, q], names) for q in queries]
            rows.append([f"L{layer}H{h}"] + tops)
            digits = [digit_of(names[int(run.patterns[layer, h, q].argmax())]) for q in queries]
            steps = sum(a is not None and b == a - 1 for a, b in zip(digits, digits[1:]))
            if steps >= max(2, (len(queries) - 1) // 2):
                stairs.append(f"L{layer}H{h}")
    text = ("Each grid shows, per layer, the heads side by side: row = the position attending (query), column = "
            "the position attended to (key). Position p predicts the token at p+1, so the table's columns read "
            "`query → token it predicts`. The table lists, for each head, the "
            "positions holding at least 20% of the attention of each answer-predicting position. ")
    if stairs:
        text += (f"Heads {join(stairs)} step through the operand digits one column at a time while the answer "
                 f"is written, from the highest digit to the lowest: the 'double staircase' of Understanding "
                 f"Addition in Transformers (the training notebook's attention view), "
                 f"each answer digit reading the digit pair it needs just in time.")
    else:
        text += "No head steps through the operand digits one column per answer digit."
    head = ["head"] + [f"{names[q]} → {names[q + 1]}" for q in queries]
    md += [text, table(head, rows)]
    found = {"positions": names, "questions": len(run.tokens), "mean_pattern": ((run.patterns.double() * 1e4).round() / 1e4).tolist(),
             "focus": {r[0]: dict(zip(head[1:], r[1:])) for r in rows}, "staircase": stairs}
    return "\n\n".join(md), found

# ----------------------------------------------------------------------------- position ablation


def step_positions(run):
    """Ablate the residual stream at one position in every layer: markdown and, per position,
    {position, name, broken, percent, classes}, plus the useful positions."""
    names, broken, B = position_names(run.n, run.task), run.broken_by_position, len(run.tokens)
    counts = broken.sum(1).tolist()
    rows = [[p, names[p], k, percent(k, B), describe_classes(broken[p], run.classes) or "-"] for p, k in enumerate(counts)]
    fig = plots.position_bars([100 * k / B for k in counts], names, f"{run.name}: {run.kind}-ablating one "
                              f"position in every layer")
    useful = run.useful_positions
    unused = [names[p] for p in range(run.cfg.n_ctx - 1) if p not in useful]  # A0 is never useful
    worst = max(range(len(counts)), key=counts.__getitem__)
    text = (f"Replacing the residual stream at one position, after every layer, by its {run.kind} over the "
            f"{B:,} varied questions, and counting the questions it breaks (mean answer loss above 0.01 and a "
            f"wrong answer token). {len(useful)} of {run.cfg.n_ctx} positions are useful: "
            f"{join(names[p] for p in useful)}. The most important is {names[worst]} (position {worst}, "
            f"{percent(counts[worst], B)}% of questions broken). ")
    if unused:
        text += (f"Nothing computed at {join(unused)} is needed: ablating them breaks nothing. This ablation "
                 f"removes what the layers add at a position, not its token: layer-0 heads elsewhere still read "
                 f"the token itself, so an operand digit that is only read, never worked on, is not a useful "
                 f"position. ")
    text += ("The last position (A0) can never matter: no answer token is predicted from it. The nodes step "
             "searches only the useful positions.")
    found = {"questions": B, "useful": useful,
             "positions": records(["position", "name", "broken", "percent", "classes"], rows)}
    return "\n\n".join(["## Useful positions", text, plots.save(fig, run.out, "positions.png"),
                        table(["position", "name", "broken", "%", "broken by class"], rows)]), found

# ----------------------------------------------------------------------------- useful nodes


def step_nodes(run):
    """Ablate each head and MLP at each useful position: markdown (the data is nodes.json)."""
    names, nodes = position_names(run.n, run.task), run.nodes
    heads = [nd for nd in nodes if not nd.is_mlp]
    rows = []
    for nd, tags in nodes.items():
        fail = fail_perc(tags)
        attn = ", ".join(f"{names[int(k)]} {v}%" for k, v in (a.split("=") for a in tag_values(tags, "Attn")))
        classes = " ".join(c for major in MAJOR.values() for c in tag_values(tags, major))
        rows.append([nd.name, names[nd.position], "<1" if fail == 0 else fail,
                     tag_values(tags, "Impact")[0], classes, attn or "-"])
    text = (f"Each head (its output `hook_z`) and each MLP (its hidden activations `hook_post`) at each useful "
            f"position was {run.kind}-ablated alone over all {len(run.tokens):,} varied questions. "
            f"{len(nodes)} nodes break at least one question: {len(heads)} heads and {len(nodes) - len(heads)} "
            f"MLPs, at {len({nd.position for nd in nodes})} positions. ")
    if nodes:
        top = [nd for nd in sorted(nodes, key=lambda nd: -fail_perc(nodes[nd])) if fail_perc(nodes[nd]) > 0][:3]
        text += ("The most important are " + join(f"{nd.name} ({fail_perc(nodes[nd])}%)" for nd in top) + ". "
                 if top else "Each breaks fewer than 1% of the questions. ")
        single = {}
        for nd, tags in nodes.items():
            impact = impact_digits(tag_values(tags, "Impact")[0], run.n)
            if len(impact) == 1:
                single.setdefault(impact[0], []).append(nd.name)
        if single:
            text += ("Nodes that affect a single answer digit: " + "; ".join(
                f"A{d}: {', '.join(v)}" for d, v in sorted(single.items(), reverse=True)) + ". ")
    text += ("The Impact column lists the answer digits that go wrong (the sign counts as "
             f"A{run.n + 1}); the classes are those of the questions broken; the attention column says "
             "where a head looks from its position. The same list is in `nodes.json`.")
    head = ["node", "at", "fail %", "impact", "classes broken", "attention"]
    listing = "\n".join(f"    {nd.name} {tags}" for nd, tags in nodes.items())
    return "\n\n".join(["## Useful nodes", text, table(head, rows), "The raw tags:", listing or "    (none)"]), None

# ----------------------------------------------------------------------------- the steps and the report


def step_framework(run):
    """The sub-task framework checked against integer arithmetic (framework.py): markdown, no data."""
    return framework.run_framework(run.task, run.n, run.progress), None


def step_algorithm(run):
    """The verified algorithm (algorithm.py); its Algo tags are added to the useful nodes (nodes.json)."""
    md, nodes, found = algorithm.step_algorithm(run)
    run.nodes = nodes
    write_nodes(os.path.join(run.out, "nodes.json"), nodes, run.cfg)
    print(md, flush=True)  # the verified algorithm table
    return md, found


# Each step returns (markdown section, its numbers or None); the numbers go to <step>.json beside report.md.
STEPS = {"accuracy": step_accuracy,        # accuracy.json: per named set and per complexity class
         "attention": step_attention,      # attention.json: mean patterns (L, H, P, P), focus, staircase
         "positions": step_positions,      # positions.json: questions broken per ablated position
         "nodes": step_nodes,              # nodes.json: the useful nodes and their tags
         "maps": plots.step_maps,          # maps.json: the cells of each quanta map
         "pca": algorithm.step_pca,        # pca.json: per head, digit and operation, the classifier scores
         "framework": step_framework,
         "algorithm": step_algorithm,      # algorithm.json: every claim tested, the passing node sets
         "neurons": algorithm.step_neurons}  # neurons.json: per useful MLP, the neurons that matter
DEFAULT_STEPS = [s for s in STEPS if s != "framework"]


def write_report(run):
    """report.md: a header describing the model and the analysis, then every section written so far."""
    cfg, info = run.cfg, run.info
    params = sum(p.numel() for p in run.model.parameters())
    about = [["checkpoint", f"`{run.checkpoint}`"], ["task", run.task],
             ["shape", f"{cfg.n_digits} digits, {cfg.n_layers} layers, {cfg.n_heads} heads, d_model {cfg.d_model}, "
                       f"d_head {cfg.d_head}, d_mlp {cfg.d_mlp}"], ["parameters", f"{params:,}"]]
    if "steps" in info:
        about.append(["training", f"{info['steps']:,} steps, seed {info.get('seed')}, final loss "
                                  f"{info.get('final_loss', float('nan')):.2e}"])
    about.append(["analysis", f"{len(run.tokens):,} varied questions (seed {run.seed}), {run.kind}-ablation"])
    n = run.n
    forms = " or ".join(f"`{'D' * n}{op}{'D' * n}=±{'A' * (n + 1)}`" for op in
                        {"add": "+", "sub": "-"}.get(run.task, "+-"))
    intro = (f"Questions are written {forms}: position p holds the token named "
             f"below and its logits predict the token at p+1, so the answer is read at positions "
             f"{data.logit_slice(n).start}..{data.logit_slice(n).stop - 1} (`=` predicts the sign). A node is a "
             f"head or an MLP at one position, written `P<position>.L<layer>.H<head>` or `P<position>.L<layer>.MLP`.")
    found, tags = os.path.join(run.out, "algorithm.json"), os.path.join(run.out, "nodes.json")
    result = {}
    if os.path.exists(found) and os.path.exists(tags):
        with open(found) as f:
            result = json.load(f)
    if "claims" in result:  # the algorithm in words opens the report (an older algorithm.json has no claims)
        words = algorithm.algorithm_in_words(result, read_nodes(tags, cfg), cfg, run.task)
    else:
        words = ("The algorithm in plain words needs the algorithm step, which has not run here: "
                 f"`python analyse.py {run.checkpoint or 'CHECKPOINT'} --only nodes algorithm`.")
    sections = [open(p).read() for p in sorted(glob.glob(os.path.join(run.out, "sections", "*.md")))]
    titles = [s.splitlines()[0][3:] for s in sections if s.startswith("## ")]
    toc = "\n".join(f"- {t}" for t in titles)
    text = "\n\n".join([f"# Analysis of {run.name}", words.rstrip(), table(["", ""], about), intro,
                        "Contents:\n\n" + toc] + sections)
    with open(os.path.join(run.out, "report.md"), "w") as f:
        f.write(text + "\n")

# ----------------------------------------------------------------------------- command line


def build_parser():
    p = train.Parser(prog="analyse.py", description="Analyse a trained model: accuracy, attention, ablations, "
                     "useful nodes, quanta maps, PCA, the verified algorithm and MLP neurons, in one report.")
    p.add_argument("checkpoint", nargs="?", default=DEFAULT_CHECKPOINT,
                   help=f"a .pt written by train.py or reuse.py (default {DEFAULT_CHECKPOINT}, the shipped "
                        "5-digit adder)")
    p.add_argument("--out", help="output folder (default out/<checkpoint name>)")
    p.add_argument("--only", nargs="+", choices=list(STEPS) + ["report"], metavar="STEP",
                   help=f"run only these steps, in the order {', '.join(STEPS)} (default: all but framework); "
                        "report.md is always rewritten from every section written so far")
    p.add_argument("--task", choices=["add", "sub", "mix"],
                   help="the model's task (default: what the checkpoint says; needed only for TransformerLens "
                        "files, which do not say)")
    p.add_argument("--seed", type=int, default=0, help="seed of the analysis questions (default 0)")
    p.add_argument("--ablation", choices=["mean", "zero"], default="mean",
                   help="replace an activation by its mean over the varied set, or by zero (default mean)")
    p.add_argument("--questions", type=train.positive(int), default=512,
                   help="random questions per batch in the varied set: a plain and an enriched batch per "
                        "operation, besides the named sets (default 512)")
    p.add_argument("--pairs", type=train.positive(int), default=100,
                   help="store/alter question pairs per claim of the verified algorithm (default 100)")
    p.add_argument("--pca-questions", type=train.positive(int), default=100,
                   help="questions per class in each PCA (default 100)")
    p.add_argument("--neuron-questions", type=train.positive(int), default=300,
                   help="questions per operation for the neuron ablations (default 300)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or mps (default auto)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars (default: shown)")
    return p


def check_path(p, path):
    """One clear line for the usual wrong paths: a folder, or the .json written beside a .pt."""
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "*.pt")))
        p.error(f"{path} is a folder: name a checkpoint (.pt) in it" + (f", e.g. {found[0]}" if found else ""))
    stem, ext = os.path.splitext(path)
    if ext == ".json":
        p.error(f"{path} is the checkpoint's information file, not the model: analyse {stem}.pt"
                if os.path.isfile(stem + ".pt") else f"{path} is a .json file, not a checkpoint (.pt)")
    if path == DEFAULT_CHECKPOINT and not os.path.isfile(path):
        p.error(f"no checkpoint given and the default {path} is missing: name a checkpoint, or train one with "
                "`python train.py --task add --digits 5`")


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    check_path(p, args.checkpoint)
    try:
        device = pick_device(args.device)
    except ValueError as e:
        p.error(str(e))
    model, info, task = train.open_checkpoint(p, args.checkpoint, args.task, device)
    name = os.path.splitext(os.path.basename(args.checkpoint))[0]
    out = args.out or os.path.join("out", name)
    os.makedirs(os.path.join(out, "sections"), exist_ok=True)
    train.set_threads(model.cfg)
    steps = [s for s in STEPS if s in (args.only or DEFAULT_STEPS)]
    settings = dict(seed=args.seed, ablation=args.ablation, questions=args.questions, pairs=args.pairs,
                    pca_questions=args.pca_questions, neuron_questions=args.neuron_questions, steps=steps,
                    progress=not args.no_progress)
    for key, value in [("checkpoint", args.checkpoint), ("task", task), ("out", out), ("steps", " ".join(steps)),
                       ("device", device), ("threads", torch.get_num_threads())] + list(settings.items())[:6]:
        print(f"{key:<17}{value}")
    run = Run(model, task, out, name, settings, info, args.checkpoint)
    t_all = time.time()
    for step in steps:
        t0, cpu0 = time.time(), time.process_time()
        section, found = STEPS[step](run)
        section += f"\n\n_Step `{step}` took {time.time() - t0:.1f} s._\n"
        with open(os.path.join(out, "sections", f"{list(STEPS).index(step):02d}_{step}.md"), "w") as f:
            f.write(section)
        if found is not None:
            write_json(os.path.join(out, f"{step}.json"), found)
        print(f"{step}: {time.time() - t0:.1f}s ({time.process_time() - cpu0:.1f}s CPU)", flush=True)
    write_report(run)
    print(f"wrote {os.path.join(out, 'report.md')} in {time.time() - t_all:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
