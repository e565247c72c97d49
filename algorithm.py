"""
What the useful nodes compute: the PCA of head outputs on tri-case questions, the verified algorithm
(interchange interventions, interventions.py, on the sub-tasks of framework.py) and the MLP neurons
that matter. Each `step_*` takes report.py's Run and returns its section of report.md and its numbers.

    python analyse.py checkpoints/add_d5_l2_h3_t6K_s1.pt --only pca algorithm neurons

The PCA follows "Understanding Addition in Transformers" (the tri-case figure): a head that carries the
TriCase state of column t (sum 0-8, 9 or 10-18) shows three clusters in its output's top principal
components. Left out on purpose: k-means and silhouette scores (a cross-validated classifier on the top
components says directly whether the classes separate), sparse autoencoders.
"""
import functools
import os

import torch
from tqdm import tqdm

import data
import framework
import interventions as iv
import plots
import evaluate
from algorithm_figure import draw_algorithm
from analyse import Node, failures, lda_accuracy, pca, replace, sample_questions

CLASSES = {"add": ["T8: sum 0-8", "T9: sum 9", "T10: sum 10-18"], "sub": ["D<D'", "D=D'", "D>D'"]}

# ----------------------------------------------------------------------------- PCA


def tricase_questions(op, n, t, per_class, gen):
    """`per_class` questions in each tri-case class of column t (add: D_t + D'_t in 0-8 / 9 / 10-18; sub:
    D_t < = > D'_t), every other digit uniform random. Returns (tokens (3*per_class, P), labels (3*per_class,)).

    The reference notebooks set the digits above t to zero; then, for a subtraction, the class of the top
    non-zero column is the answer's sign, and a head that carries only the sign looks tri-state. With the
    other digits random the sign is (nearly) independent of the class."""
    x, y = torch.randint(0, 10, (2, 40 * per_class), generator=gen)  # 40x: every class gets enough
    cls = (x + y >= 9).long() + (x + y >= 10).long() if op == "add" else (x >= y).long() + (x > y).long()
    pick = torch.cat([torch.nonzero(cls == c)[:per_class, 0] for c in range(3)])
    top = 10 ** n
    a, b = torch.randint(0, top, (2, len(pick)), generator=gen)
    a = a - (a // 10 ** t % 10) * 10 ** t + x[pick] * 10 ** t  # column t set to the class's digits
    b = b - (b // 10 ** t % 10) * 10 ** t + y[pick] * 10 ** t
    return data.make_questions(a, b, op, n), cls[pick]


def tricase_label(X, labels, seed=0, k=2):
    """PCA of one head's outputs X (N, C) on tri-case questions with class `labels` (N,), and a label:
    'tri' when a cross-validated linear discriminant on the top k components separates the three classes
    (accuracy >= 0.95), 'bi' when it separates two of them merged from the third, else 'none'.
    Returns (label, 3-class accuracy, best 2-class accuracy, projections (N, k), explained variance (k,))."""
    merges = [torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])]  # T8+T9 | T10 (carry), T8 | T9+T10
    proj, _, evr = pca(X, k)
    acc3 = lda_accuracy(proj, labels, seed=seed)
    acc2 = max(lda_accuracy(proj, m[labels], seed=seed) for m in merges)
    return "tri" if acc3 >= 0.95 else "bi" if acc2 >= 0.95 else "none", acc3, acc2, proj, evr


def pca_scores(model, task, heads, per_class=100, seed=0, progress=True):
    """For every head Node and digit t (and op, for mix): tricase_label of its hook_result (z @ W_O,
    without b_O, as in the reference notebooks). Returns dicts {node, op, digit, label, acc3, acc2, evr,
    proj, labels}, strongest first."""
    n, gen, out = model.cfg.n_digits, torch.Generator().manual_seed(seed), []
    jobs = [(op, t) for op in evaluate.ops_of(task) for t in range(n)]
    for op, t in tqdm(jobs, desc="pca", disable=not progress, mininterval=0.5):
        tokens, labels = tricase_questions(op, n, t, per_class, gen)
        with torch.inference_mode():
            _, cache = model.run_with_cache(tokens, names=lambda s: s.endswith("hook_result"))
        for node in heads:
            X = cache[f"blocks.{node.layer}.attn.hook_result"][:, node.position, node.head]  # (N, C)
            label, acc3, acc2, proj, evr = tricase_label(X, labels, seed)
            out.append({"node": node, "op": op, "digit": t, "label": label, "acc3": acc3,
                        "acc2": acc2, "evr": evr.tolist(), "proj": proj, "labels": labels})
    return sorted(out, key=lambda r: (-r["acc3"], -r["acc2"]))


def step_pca(run, grid=12):
    """PCA step: markdown with the label table and a grid of the strongest separations (pca_grid.png),
    and the scores of every head, digit and operation."""
    heads = [nd for nd in run.nodes if not nd.is_mlp]
    scores = pca_scores(run.model, run.task, heads, run.settings["pca_questions"], run.seed, run.progress)
    found = [s for s in scores if s["label"] != "none"]
    lines = ["## PCA of head outputs on tri-case questions", "",
             f"{len(heads)} heads x {run.n} digits, {run.settings['pca_questions']} questions per class, the "
             "digits outside column t random. A head/digit is *tri-state* when a linear discriminant in the "
             "PC1-PC2 plane (5-fold cross-validated) separates the three classes of column t with >= 95% "
             "accuracy, *bi-state* when two classes merged vs the third do.",
             "", f"tri-state: {sum(s['label'] == 'tri' for s in scores)}, bi-state: "
             f"{sum(s['label'] == 'bi' for s in scores)}, none: {sum(s['label'] == 'none' for s in scores)}", ""]
    if found:
        panels = [{"proj": s["proj"], "labels": s["labels"], "classes": CLASSES[s["op"]], "evr": s["evr"],
                   "title": f"{'+' if s['op'] == 'add' else '-'} {s['node'].name} D{s['digit']}: {s['label']}, "
                            f"LDA {s['acc3']:.2f}"} for s in found[:grid]]
        lines += [plots.save(plots.plot_pca(panels), run.out, "pca_grid.png"), "",
                  "| node | op | column | state | acc 3 classes | acc 2 classes | EVR PC1 |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {s['node'].name} | {s['op']} | D{s['digit']} | {s['label']} | {s['acc3']:.2f} | "
                  f"{s['acc2']:.2f} | {100 * s['evr'][0]:.0f}% |" for s in found]
    data_out = [{k: (v.name if k == "node" else v) for k, v in s.items() if k not in ("proj", "labels")} for s in scores]
    return "\n".join(lines) + "\n", data_out

# ----------------------------------------------------------------------------- the verified algorithm


# --- the verified algorithm: interventions.py does the work (discovery's own block, kept separate) ---


def step_algorithm(run):
    """Discovery step on the useful nodes (interventions.discover): markdown with the drawn algorithm
    (algorithm.png), the nodes with their Algo tags (earlier Algo tags replaced) and the discovery's numbers."""
    result = iv.discover(run.model, run.task, run.nodes, n_pairs=run.settings["pairs"], seed=run.seed,
                         progress=run.progress)
    tags = iv.algo_tags(result)
    nodes = {nd: [t for t in old if not t.startswith("Algo")] + tags.get(nd, []) for nd, old in run.nodes.items()}
    draw_algorithm(result, run.cfg, os.path.join(run.out, "algorithm.png"))
    return iv.discovery_markdown(result, run.cfg, figure="algorithm.png"), nodes, result

# --- end of discovery's block ---

# ----------------------------------------------------------------------------- neurons


def neuron_ablation(model, task, mlp: Node, count=300, chunk=16, seed=0):
    """Mean-ablate the neurons of one MLP node in chunks of `chunk`, then each neuron of a chunk that
    makes questions fail. Returns (failing chunks [(first neuron, fails)], {neuron: (fails, loss
    increase per answer token (n+2,) in nats)} for the neurons of those chunks, the questions (B, P),
    the MLP's activations at its position (B, M)). Means are over the same `count` questions per operation."""
    n = model.cfg.n_digits
    tokens = sample_questions(task, n, count, torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names=[mlp.hook_name])
    acts = cache[mlp.hook_name][:, mlp.position]                          # (B, M)
    mean = acts.mean(0)                                                   # (M,)
    intact = failures(model, tokens, n)
    ok = ~intact.wrong.any(1)
    base = intact.nll[ok].mean(0)                                         # (n+2,)

    def run(neurons):
        hook = functools.partial(replace, index=(mlp.position, neurons), value=mean[neurons])
        out = failures(model, tokens, n, [(mlp.hook_name, hook)])
        return int((ok & out.fails).sum()), out.nll[ok].mean(0) - base

    chunks, found = [], {}
    for start in range(0, model.cfg.d_mlp, chunk):
        group = list(range(start, min(start + chunk, model.cfg.d_mlp)))
        fails = run(group)[0]
        if fails:
            chunks.append((start, fails))
            found.update({k: run([k]) for k in group})
    return chunks, found, tokens, acts


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


def step_neurons(run, per_mlp=4):
    """Neuron step: for each useful MLP, the neurons whose ablation makes questions fail, and plots of
    the most harmful ones' activations against the column of the answer digit they serve (the digit
    whose loss their ablation raises most). Returns markdown and, per MLP, its failing chunks and neurons."""
    n, count = run.n, run.settings["neuron_questions"]
    mlps = [nd for nd in run.nodes if nd.is_mlp]
    lines = ["## MLP neurons", "", "Neurons mean-ablated in chunks of 16, then one by one inside chunks "
             "that make questions fail (loss > 0.01 and a wrong answer). The digit a neuron serves is the "
             "answer token whose loss its ablation raises most.", "",
             "| MLP | failing chunks | neurons that fail questions alone (fails) | digits served |",
             "|---|---|---|---|"]
    labels = ["sign"] + [f"A{d}" for d in range(n, -1, -1)]
    figures, numbers = [], []
    for mlp in tqdm(mlps, desc="neurons", disable=not run.progress, mininterval=0.5):
        chunks, found, tokens, acts = neuron_ablation(run.model, run.task, mlp, count, seed=run.seed)
        alone = sorted((k for k in found if found[k][0]), key=lambda k: -found[k][0])
        harm = sorted(found, key=lambda k: -(found[k][0] * 1e3 + float(found[k][1].max())))[:per_mlp]
        serve = {k: int(found[k][1].argmax()) for k in found}
        lines.append(f"| {mlp.name} | {len(chunks)} of {-(-run.cfg.d_mlp // 16)} | " +
                     (", ".join(f"{k} ({found[k][0]})" for k in alone[:12]) or "none") +
                     (" ..." if len(alone) > 12 else "") + " | " +
                     (", ".join(sorted({labels[serve[k]] for k in alone or harm})) or "-") + " |")
        numbers.append({"node": mlp.name, "questions": len(tokens), "failing_chunks": chunks,
                        "neurons": [{"neuron": k, "fails": f, "serves": labels[serve[k]],
                                     "loss_increase": [round(v, 6) for v in d.tolist()]} for k, (f, d) in found.items()]})
        if harm:
            fig = plots.plot_neurons([acts[:, k] for k in harm], [column_view(tokens, n, serve[k]) for k in harm],
                                     [f"{mlp.name} n{k}: {labels[serve[k]]}, {found[k][0]} fails" for k in harm])
            figures.append(plots.save(fig, run.out, f"neurons_{mlp.name.replace('.', '')}.png", dpi=100))
    return "\n".join(lines + [""] + figures) + "\n", numbers
