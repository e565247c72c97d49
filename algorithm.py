"""
What the useful nodes compute: PCA of head outputs on tri-case questions, the framework check, the
verified algorithm (interchange interventions, interventions.py) and the MLP neurons that matter.

    python algorithm.py checkpoints/add_d5_l2_h3_t4K_s1.pt --only algorithm --out analysis/
    python algorithm.py CHECKPOINT --nodes analysis/nodes.json      # all four steps on analyse.py's nodes

analyse.py calls run_pca, run_framework, run_algorithm and run_neurons with its useful nodes
({position, layer, head, tags}; head == n_heads is the MLP). Without a node list every node at every
position is a candidate, and "useful" (for the share of nodes explained) is decided by a quick
mean-ablation here. Each step returns markdown that embeds the PNGs it wrote to `out`.
Left out on purpose: k-means and silhouette scores (a cross-validated nearest-centroid accuracy in
the plotted PC1-PC2 plane says directly whether the classes separate), sparse autoencoders.
"""
import json
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import data  # noqa: E402
import framework  # noqa: E402
import interventions as iv  # noqa: E402
import evaluate  # noqa: E402
import train  # noqa: E402
from model import CheckpointError, load_model  # noqa: E402

CLASSES = {"add": ["T8: sum 0-8", "T9: sum 9", "T10: sum 10-18"], "sub": ["D<D'", "D=D'", "D>D'"]}
COLOURS = ["tab:red", "tab:green", "tab:blue"]

# ----------------------------------------------------------------------------- PCA by hand


def pca(X: torch.Tensor, k: int):
    """X (N, C) -> (projections (N, k), components (k, C), explained-variance ratios (k,)).
    Centre, then SVD: the right singular vectors are the principal axes, S^2 their variances."""
    Xc = X - X.mean(0)
    _, S, Vh = torch.linalg.svd(Xc, full_matrices=False)  # S: (min(N, C),), Vh: (min(N, C), C)
    var = S.pow(2)
    return Xc @ Vh[:k].T, Vh[:k], var[:k] / var.sum().clamp_min(1e-30)


def centroid_accuracy(Z, labels, folds=5, seed=0):
    """Cross-validated nearest-centroid accuracy of `labels` (N,) from points Z (N, d)."""
    perm = torch.randperm(len(Z), generator=torch.Generator().manual_seed(seed))
    classes, correct = labels.unique(), 0
    for f in range(folds):
        test = perm[f::folds]
        train_mask = torch.ones(len(Z), dtype=torch.bool)
        train_mask[test] = False
        cents = torch.stack([Z[train_mask & (labels == c)].mean(0) for c in classes])  # (K, d)
        correct += int((classes[torch.cdist(Z[test], cents).argmin(1)] == labels[test]).sum())
    return correct / len(Z)


def tricase_questions(op, n, t, per_class, gen):
    """Questions whose column t is in each tri-case class (add: sums 0-8 / 9 / 10-18; sub: D_t < = >
    D'_t), digits below t random, above t zero. Returns (tokens (3*per_class, P), labels (3*per_class,))."""
    x, y = torch.randint(0, 10, (2, 40 * per_class), generator=gen)  # 40x: every class gets enough
    cls = (x + y >= 9).long() + (x + y >= 10).long() if op == "add" else (x >= y).long() + (x > y).long()
    pick = torch.cat([torch.nonzero(cls == c)[:per_class, 0] for c in range(3)])
    low = 10 ** t
    a = x[pick] * low + torch.randint(0, low, (len(pick),), generator=gen)
    b = y[pick] * low + torch.randint(0, low, (len(pick),), generator=gen)
    return data.make_questions(a, b, op, n), cls[pick]


def plot_pca(panels, cols=4):
    """panels: dicts {proj (N, 2), labels (N,), classes [3 names], title}. One scatter each."""
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, pnl in zip(axes.flat, panels):
        for c in range(3):
            pts = pnl["proj"][pnl["labels"] == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=6, c=COLOURS[c], label=pnl["classes"][c])
        ax.set_title(pnl["title"], fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    axes.flat[0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig


def pca_scores(model, task, heads, per_class=100, seed=0, progress=True):
    """For every head (position, layer, head) and digit t (and op, for mix): PCA of its hook_result
    on tri-case questions and a label: tri-state (3 classes separate), bi-state (two of them merged
    separate from the third) or none. Returns a list of dicts sorted strongest first."""
    n, gen, out = model.cfg.n_digits, torch.Generator().manual_seed(seed), []
    merges = [torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])]  # T8+T9 | T10 (carry), T8 | T9+T10
    jobs = [(op, t) for op in evaluate.ops_of(task) for t in range(n)]
    for op, t in tqdm(jobs, desc="pca", disable=not progress, mininterval=0.5):
        tokens, labels = tricase_questions(op, n, t, per_class, gen)
        with torch.inference_mode():
            _, cache = model.run_with_cache(tokens, names=lambda s: s.endswith("hook_result"))
        for p, l, h in heads:
            X = cache[f"blocks.{l}.attn.hook_result"][:, p, h]          # (N, C): z @ W_O, without b_O
            proj, _, evr = pca(X, 2)
            acc3 = centroid_accuracy(proj, labels, seed=seed)
            acc2 = max(centroid_accuracy(proj, m[labels], seed=seed) for m in merges)
            label = "tri" if acc3 >= 0.95 else "bi" if acc2 >= 0.95 else "none"
            out.append({"node": (p, l, h), "op": op, "digit": t, "label": label, "acc3": acc3,
                        "acc2": acc2, "evr": evr.tolist(), "proj": proj, "labels": labels})
    return sorted(out, key=lambda r: (-r["acc3"], -r["acc2"]))


def run_pca(model, task, nodes, out, progress=True, seed=0, grid=12) -> str:
    """PCA step: markdown with the label table and a grid of the strongest separations (pca_grid.png)."""
    H = model.cfg.n_heads
    heads = [tuple(x) for x in _node_tuples(model, nodes) if x[2] < H]
    scores = pca_scores(model, task, heads, seed=seed, progress=progress)
    found = [s for s in scores if s["label"] != "none"]
    lines = ["## PCA of head outputs on tri-case questions", "",
             f"{len(heads)} heads x {model.cfg.n_digits} digits; a head/digit is *tri-state* when a "
             "nearest-centroid classifier in the PC1-PC2 plane (5-fold cross-validated) separates the "
             "three classes of column t with >= 95% accuracy, *bi-state* when two classes merged vs the third do.",
             "", f"tri-state: {sum(s['label'] == 'tri' for s in scores)}, bi-state: "
             f"{sum(s['label'] == 'bi' for s in scores)}, none: {sum(s['label'] == 'none' for s in scores)}", ""]
    if found:
        panels = [{"proj": s["proj"], "labels": s["labels"], "classes": CLASSES[s["op"]],
                   "title": f"{'+' if s['op'] == 'add' else '-'} {iv.node_name(s['node'], H)} D{s['digit']} "
                            f"EVR {100 * s['evr'][0]:.0f}% {s['label']}"} for s in found[:grid]]
        fig = plot_pca(panels)
        fig.savefig(os.path.join(out, "pca_grid.png"), dpi=110)
        plt.close(fig)
        lines += ["![strongest PCA separations](pca_grid.png)", "",
                  "| node | op | column | state | acc 3 classes | acc 2 classes | EVR PC1 |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {iv.node_name(s['node'], H)} | {s['op']} | D{s['digit']} | {s['label']} | {s['acc3']:.2f} | "
                  f"{s['acc2']:.2f} | {100 * s['evr'][0]:.0f}% |" for s in found]
    return "\n".join(lines) + "\n"

# ----------------------------------------------------------------------------- the verified algorithm


def _node_tuples(model, nodes):
    """analyse.py's node dicts -> (position, layer, head) tuples; None -> every node."""
    if nodes is None:
        return iv.all_nodes(model.cfg)
    return [(d["position"], d["layer"], d["head"]) for d in nodes]


def _fails(model, tokens, n, hooks=()):
    """SPEC 4.5 failure: mean answer loss > 0.01 and a wrong answer token. (B,) bool."""
    with torch.inference_mode():
        logits = model.run_with_hooks(tokens, hooks)[:, data.logit_slice(n)]
    wrong = (logits.argmax(-1) != tokens[:, data.answer_slice(n)]).any(1)
    return wrong & (evaluate.answer_nll(logits, tokens, n).mean(1) > 0.01)


def questions(task, n, count, seed):
    """A varied set: `count` enriched random questions per operation."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([data.random_batch(op, n, count, gen) for op in evaluate.ops_of(task)])


def useful_by_ablation(model, task, count=500, seed=0, progress=True):
    """Stand-in for analyse.py's useful nodes: nodes whose mean-ablation makes a question fail."""
    n, H = model.cfg.n_digits, model.cfg.n_heads
    tokens = questions(task, n, count, seed)
    tokens = tokens[evaluate.score(model, tokens, n)[0]]  # only questions the intact model answers right
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names=iv._is_site)
    useful = []
    for node in tqdm(iv.all_nodes(model.cfg), desc="useful nodes", disable=not progress, mininterval=0.5):
        name, idx = iv._site(node, H)
        mean = cache[name][(slice(None),) + idx].mean(0)

        def ablate(x, hook, idx=idx, mean=mean):
            x = x.clone()
            x[(slice(None),) + idx] = mean
            return x
        if _fails(model, tokens, n, [(name, ablate)]).any():
            useful.append(node)
    return useful


def describe(rows, n_heads) -> str:
    """One sentence per answer digit saying which nodes do which verified sub-task."""
    by_digit = {}
    for r in rows:
        if r["sets"]:
            names = " or ".join(" + ".join(iv.node_name(x, n_heads) for x in s) for s in r["sets"])
            by_digit.setdefault(r["digit"], []).append(f"{r['subtask']} by {names}")
    return "\n".join(f"- {d}: " + "; ".join(parts) + "." for d, parts in by_digit.items())


def run_algorithm(model, task, nodes, out, progress=True, n_pairs=100, seed=0):
    """Discovery step. Returns (markdown, nodes with 'Algo.<An>.<subtask>' tags added) and writes
    algorithm.md and algorithm.json to `out`. Without `nodes`, every node is a candidate and the returned
    list holds the useful-by-ablation nodes."""
    H, t0 = model.cfg.n_heads, time.time()
    candidates = _node_tuples(model, nodes)
    rows = iv.discover(model, task, candidates, n_pairs=n_pairs, seed=seed, progress=progress)
    seconds = time.time() - t0
    tags = iv.algo_tags(rows)
    if nodes is None:
        nodes = [{"position": p, "layer": l, "head": h, "tags": []}
                 for p, l, h in useful_by_ablation(model, task, seed=seed, progress=progress)]
    nodes = [dict(d, tags=list(d["tags"]) + [t for t in tags.get((d["position"], d["layer"], d["head"]), [])
                                              if t not in d["tags"]]) for d in nodes]
    share = []
    for kind, is_kind in (("heads", lambda d: d["head"] < H), ("MLPs", lambda d: d["head"] == H)):
        group = [d for d in nodes if is_kind(d)]
        done = sum(any(t.startswith("Algo.") for t in d["tags"]) for d in group)
        share.append(f"{done}/{len(group)} useful {kind} ({100 * done / max(1, len(group)):.0f}%)")
    found = sum(bool(r["sets"]) for r in rows)
    md = "\n".join([
        "## The verified algorithm (interchange interventions)", "",
        f"Each row claims that patching the node(s) from a store question into an alter question that differ "
        f"only in that sub-task moves the answer exactly as framework.py predicts; it passes only if every "
        f"pair agrees. {found} of {len(rows)} digit/sub-task claims verified in {seconds:.0f}s.", "",
        iv.table(rows, H), "", describe(rows, H), "",
        f"Purpose found for {share[0]} and {share[1]}.", ""])
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "algorithm.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out, "algorithm.json"), "w") as f:
        json.dump({"seconds": seconds, "rows": [dict(r, sets=[[list(x) for x in s] for s in r["sets"]],
                                                     best=[list(x) for x in r["best"]],
                                                     alone=[[*x, m] for x, m in r["alone"].items()]) for r in rows],
                   "nodes": nodes}, f, indent=1)
    return md, nodes

# ----------------------------------------------------------------------------- neurons


def neuron_ablation(model, task, mlp, count=300, chunk=16, seed=0):
    """Mean-ablate the neurons of one MLP node (position, layer) in chunks of `chunk`, then each neuron
    of a chunk that makes questions fail. Returns (failing chunks [(first neuron, fails)],
    {neuron: (fails, loss increase per answer token (n+2,))} for the neurons of those chunks,
    questions (B, P), the MLP's activations at that position (B, M))."""
    p, l = mlp
    n, name = model.cfg.n_digits, f"blocks.{l}.mlp.hook_post"
    tokens = questions(task, n, count, seed)
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens, names=[name])
    ok = (logits[:, data.logit_slice(n)].argmax(-1) == tokens[:, data.answer_slice(n)]).all(1)
    base = evaluate.answer_nll(logits, tokens, n)[ok].mean(0)               # (n+2,)
    mean = cache[name][:, p].mean(0)                                    # (M,)

    def run(neurons):
        def ablate(x, hook):
            x = x.clone()
            x[:, p, neurons] = mean[neurons]
            return x
        with torch.inference_mode():
            out = model.run_with_hooks(tokens, [(name, ablate)])[:, data.logit_slice(n)]
        nll = evaluate.answer_nll(out, tokens, n)                           # (B, n+2)
        fail = ok & (out.argmax(-1) != tokens[:, data.answer_slice(n)]).any(1) & (nll.mean(1) > 0.01)
        return int(fail.sum()), nll[ok].mean(0) - base

    chunks, found = [], {}
    for start in range(0, model.cfg.d_mlp, chunk):
        group = list(range(start, min(start + chunk, model.cfg.d_mlp)))
        fails = run(group)[0]
        if fails:
            chunks.append((start, fails))
            found.update({k: run([k]) for k in group})
    return chunks, found, tokens, cache[name][:, p]


def column_view(tokens, n, k):
    """For answer index k of `sign A(n)..A0` (0 = sign): the column the digit depends on and its
    carry/borrow in. Returns (x (B,) the column's sum or difference, c (B,) carry/borrow in, x label)."""
    a, b, is_sub, _ = data.parse_questions(tokens, n)
    digit = n + 1 - k if k > 0 else n                  # A_digit; the sign looks at the top column
    t = digit if digit < n else n - 1                  # A_n is the carry out of column n-1
    xs, ys = framework.column_digits(a, n), framework.column_digits(b, n)
    add, sub = framework.add_subtasks(xs, ys), framework.sub_subtasks(xs, ys)
    x = torch.where(is_sub, xs[:, t] - ys[:, t], xs[:, t] + ys[:, t])
    c = torch.where(is_sub, sub["borrow"][:, t], add["carry"][:, t])
    return x, c, f"D{t} {'-' if is_sub.all() else '+'} D'{t}"


def plot_neurons(acts, views, titles):
    """One scatter per neuron: activation against its digit's column value, coloured by carry in."""
    cols = min(4, len(acts))
    rows = (len(acts) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(acts):]:
        ax.axis("off")
    for ax, act, (x, c, xlabel), title in zip(axes.flat, acts, views, titles):
        for v, colour in ((0, "tab:blue"), (1, "tab:orange")):
            ax.scatter(x[c == v], act[c == v], s=5, c=colour, label=f"carry/borrow in {v}")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=7)
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def run_neurons(model, task, nodes, out, progress=True, seed=0, per_mlp=4) -> str:
    """Neuron step: for each useful MLP, the neurons whose ablation makes questions fail, and plots of
    the most harmful ones' activations against the column of the answer digit they serve (the digit
    whose loss their ablation raises most). Without `nodes`, the MLPs useful by mean-ablation."""
    n, H = model.cfg.n_digits, model.cfg.n_heads
    tuples = _node_tuples(model, nodes) if nodes is not None else useful_by_ablation(model, task, progress=progress)
    mlps = [(p, l) for p, l, h in tuples if h == H]
    lines = ["## MLP neurons", "", "Neurons mean-ablated in chunks of 16, then one by one inside chunks "
             "that make questions fail (loss > 0.01 and a wrong answer). The digit a neuron serves is the "
             "answer token whose loss its ablation raises most.", "",
             "| MLP | failing chunks | neurons that fail questions alone (fails) | digits served |",
             "|---|---|---|---|"]
    labels = ["sign"] + [f"A{d}" for d in range(n, -1, -1)]
    figures = []
    for p, l in tqdm(mlps, desc="neurons", disable=not progress, mininterval=0.5):
        chunks, found, tokens, acts = neuron_ablation(model, task, (p, l), seed=seed)
        name = iv.node_name((p, l, H), H)
        alone = sorted((k for k in found if found[k][0]), key=lambda k: -found[k][0])
        harm = sorted(found, key=lambda k: -(found[k][0] * 1e3 + float(found[k][1].max())))[:per_mlp]
        serve = {k: int(found[k][1].argmax()) for k in found}
        lines.append(f"| {name} | {len(chunks)} of {-(-model.cfg.d_mlp // 16)} | " +
                     (", ".join(f"{k} ({found[k][0]})" for k in alone[:12]) or "none") +
                     (" ..." if len(alone) > 12 else "") + " | " +
                     (", ".join(sorted({labels[serve[k]] for k in alone or harm})) or "-") + " |")
        if harm:
            fig = plot_neurons([acts[:, k] for k in harm], [column_view(tokens, n, serve[k]) for k in harm],
                               [f"{name} n{k}: {labels[serve[k]]}, {found[k][0]} fails" for k in harm])
            fname = f"neurons_{name.replace('.', '')}.png"
            fig.savefig(os.path.join(out, fname), dpi=100)
            plt.close(fig)
            figures.append(f"![{name}]({fname})")
    return "\n".join(lines + [""] + figures) + "\n"


# ----------------------------------------------------------------------------- command line


def run_framework(task, n_digits, progress=True):
    return framework.run_framework(task, n_digits, progress)


def main(argv=None):
    p = train.Parser(description="PCA, framework, verified algorithm and neurons of a checkpoint.")
    p.add_argument("checkpoint", help="a .pt written by train.py or reuse.py")
    p.add_argument("--only", choices=["pca", "framework", "algorithm", "neurons"], help="run one step")
    p.add_argument("--nodes", help="useful nodes from analyse.py (JSON list of {position, layer, head, tags})")
    p.add_argument("--out", default="analysis", help="folder for the markdown, JSON and PNGs")
    p.add_argument("--pairs", type=train.positive(int), default=100, help="store/alter pairs per claim")
    p.add_argument("--seed", type=int, default=0, help="seed of the question generators")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)
    try:
        model, info = load_model(args.checkpoint)
    except CheckpointError as e:
        p.error(str(e))
    task = info.get("task")
    if task not in ("add", "sub", "mix"):
        p.error(f"{args.checkpoint}: the checkpoint does not say its task (add, sub or mix)")
    nodes = None
    if args.nodes:
        try:
            with open(args.nodes) as f:
                nodes = [dict(d, tags=d.get("tags", [])) for d in json.load(f)]
            assert all({"position", "layer", "head"} <= set(d) for d in nodes)
        except (OSError, ValueError, AssertionError, TypeError):
            p.error(f"{args.nodes}: not a JSON list of {{position, layer, head, tags}} nodes")
        cfg = model.cfg
        if not all(0 <= d["position"] < cfg.n_ctx and 0 <= d["layer"] < cfg.n_layers and 0 <= d["head"] <= cfg.n_heads
                   for d in nodes):
            p.error(f"{args.nodes}: a node lies outside this {cfg.n_layers}-layer, {cfg.n_heads}-head, "
                    f"{cfg.n_ctx}-position model")
    train.set_threads(model.cfg)
    os.makedirs(args.out, exist_ok=True)
    progress, n = not args.no_progress, model.cfg.n_digits
    steps = [args.only] if args.only else ["framework", "pca", "algorithm", "neurons"]
    parts = []
    for step in steps:
        if step == "framework":
            parts.append(run_framework(task, n, progress))
        elif step == "pca":
            parts.append(run_pca(model, task, nodes, args.out, progress, seed=args.seed))
        elif step == "algorithm":
            md, nodes = run_algorithm(model, task, nodes, args.out, progress, args.pairs, args.seed)
            parts.append(md)
        else:
            parts.append(run_neurons(model, task, nodes, args.out, progress, seed=args.seed))
        print(parts[-1], flush=True)
    with open(os.path.join(args.out, "algorithm_report.md"), "w") as f:
        f.write("\n".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
