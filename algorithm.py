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
import math
import os

import torch
from tqdm import tqdm

import data
import framework
import interventions as iv
import plots
import evaluate
from algorithm_figure import draw_algorithm
from analyse import Node, failures, lda_accuracy, pca, position_names, replace, sample_questions, tag_values

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
            _, cache = model.run_with_cache(tokens, names_filter=lambda s: s.endswith("hook_result"))
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
    return discovery_markdown(result, run.cfg, figure="algorithm.png"), nodes, result


SUBTASK_WORDS = {  # one phrase per sub-task, for the plain-words summary ("Understanding Addition", section 3)
    "SA": "base add, (D_k + D'_k) % 10", "SC": "make carry: column k-1 sums to 10 or more",
    "SS": "make sum 9: column k-1 sums to 9, so a carry from below passes through it",
    "ST": "cascade: a carry passed up from lower columns through sum-9 columns",
    "MD": "base difference, (D_k - D'_k) % 10, when D >= D'",
    "MB": "make borrow: D_(k-1) < D'_(k-1)",
    "MZ": "equal digits in column k-1, so a borrow passes through it", "MT": "borrow cascade",
    "ND": "base difference of a negative answer, (D'_k - D_k) % 10", "NB": "make borrow, on D' - D",
    "NZ": "equal digits, on D' - D", "NT": "borrow cascade, on D' - D",
    "SGN": "the answer's sign", "OPR": "the operator (+ or -)"}
FAMILY_WORDS = {"add": "addition", "sub": "subtraction, D >= D'", "neg": "subtraction, negative answer",
                "sign": "sign", "operator": "operator"}


def algorithm_in_words(result, nodes, cfg, task) -> str:
    """The verified algorithm in plain words, for the top of report.md: one definition paragraph, then one
    line per answer digit (and per operation family, for mixed models) naming the nodes whose strong
    tests passed for each sub-task, what each head reads (its Attn tags: key token, % of its attention),
    the combiners, and "no single node or pair was found for X" where none passed. `result` is
    interventions.discover's dict (algorithm.json), `nodes` {Node: tags} (nodes.json via analyse.read_nodes),
    `cfg` the model's Config, `task` 'add' | 'sub' | 'mix'. Returns markdown (str)."""
    names, n, info = position_names(cfg.n_digits, task), cfg.n_digits, result["nodes"]
    tags = {nd.name: tg for nd, tg in nodes.items()}

    def who(name, seen):  # 'P14.L0.H0 (reads `D3` 48%, `D'3` 47%)', the reads only where first named
        reads = [f"`{names[int(k)]}` {v}%" for k, v in (a.split("=") for a in tag_values(tags.get(name, []), "Attn"))
                 if int(v) >= 10]
        first, _ = name not in seen, seen.add(name)
        return name + (f" (reads {', '.join(reads)})" if reads and first and not name.endswith("MLP") else "")
    used = {c["subtask"] for c in result["claims"]}
    order = [t for ts in framework.FAMILIES.values() for t in ts if t in used]
    lines = ["## The algorithm in words", "",
             "Each answer digit A_k (k = 0 is the units digit) is built from sub-tasks of the operands' digits D_k "
             "and D'_k (column k): " + "; ".join(f"**{t}** {SUBTASK_WORDS[t]}" for t in order) + ". Positions "
             "number the question's tokens from 0, and each digit is predicted at the position just before it. "
             "A node is a head or an MLP at one position (`P14.L0.H1`: position 14, layer 0, head 1); it *does* "
             "a sub-task when "
             "copying its output from one question into another changes the answer exactly as that sub-task "
             f"predicts on at least {100 * result['threshold']:.0f}% of question pairs (an interchange intervention, "
             "defined in the algorithm section below). A head's percentages are the share of its attention on each "
             "token; a *combiner* carries every sub-task of its digit.", ""]
    whole = [c for c in result["claims"] if c["column"] is None]
    for k in sorted({c["digit"] for c in whole}, reverse=True):
        label = "The sign" if k == n + 1 else f"A{k}"
        for fam in dict.fromkeys(c["family"] for c in whole if c["digit"] == k):
            claims, seen, parts = [c for c in whole if c["digit"] == k and c["family"] == fam], set(), []
            single = sum(c["tested"] for c in claims) == 1  # one sub-task: its combiners simply do it
            comb = [x for x, e in info.items() if any(e["kinds"].get(c["claim"]) == "combiner" for c in claims)]
            for c in claims:
                t, cl = c["subtask"], c["claim"]
                alone = [x for x, e in info.items() if e["kinds"].get(cl) == "specific" or single and cl in e["kinds"]]
                pairs = {tuple(sorted([x, p])) for x, e in info.items() for c2, p, _ in e["pairs"] if c2 == cl}
                found = [who(x, seen) for x in alone] + [f"{a} and {b} together" for a, b in sorted(pairs)]
                if not c["tested"]:
                    parts.append(f"{t} was not tested (too few question pairs the model answers right)")
                elif found:
                    parts.append(f"{t} is done by " + " or by ".join(found))
                elif any(cl in info[x]["kinds"] for x in comb):
                    parts.append(f"{t} only by the combiner{'s' if len(comb) > 1 else ''}")
                else:
                    parts.append(f"no single node or pair was found for {t}")
            fams = f", {FAMILY_WORDS[fam]}" if len({c["family"] for c in whole}) > 1 and fam != "sign" else ""
            tail = "" if single or not comb else (f" {' and '.join(who(x, seen) for x in comb)} combine"
                                                  f"{'s' if len(comb) == 1 else ''} them (every sub-task of {label}).")
            where = f"predicted at position {iv.answer_position(k, n)}{fams}"
            lines.append(f"- **{label}** ({where}): " + "; ".join(parts) + "." + tail)
    return "\n".join(lines) + "\n"


DEFINITIONS = (
    "**How to read this.** An *interchange intervention* runs a *store* question, copies one node's activation "
    "(a head's output z, or an MLP's hidden activation, at its position) into the run of an *alter* question, and "
    "reads the answer. Each *store/alter pair* differs only in the digits one sub-task reads; every other digit is "
    "random. Sub-tasks of answer digit A_k (k = 0 is the units digit): **SA** base add (D_k + D'_k) % 10; **SC** the "
    "carry column k-1 makes (D + D' >= 10); **SS** column k-1 sums to 9, so a carry from below passes through it; "
    "**ST** the carry that reaches A_k from the columns below through a sum-9 column k-1 (the TriAdd cascade of "
    "TriCase states: 8 no carry, 9 passes one on, 10 makes one); **ST(Dj)** the TriCase state of column j alone, "
    "passed up through sum-9 columns. For subtraction with D >= D' the same are **MD** difference, **MB** borrow, "
    "**MZ** equal digits, **MT** borrow cascade; for negative answers **ND, NB, NZ, NT** on D' - D; **SGN** is the "
    "answer's sign (for a digit: whether it is computed as MD or as ND) and **OPR** the operator. A test is "
    "*strong* when the patched answer equals the framework's "
    "prediction exactly (the alter's answer with A_k recomputed from the store's sub-task) on at least {tau:.0f}% "
    "of the pairs, *weak* when A_k becomes the predicted digit that often but other answer digits move too (for "
    "ST(Dj) the prediction may also change every digit the cascade reaches; for OPR, A_k may follow "
    "the other operator with the store's sign or with the alter's). A node's purpose is *specific* when "
    "it carries some of its digit's sub-tasks (SA, SC, SS, ST or the M/N ones) and fails the others, a "
    "*combiner* when it carries all of them. Alternatives are written with *or*: each node passes on its own.")


def _tail(p, n, tau):
    """P(X >= tau% of n) for X ~ Binomial(n, p): the chance a test with true pass rate p passes."""
    need = math.ceil(tau * n / 100)
    return sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(need, n + 1))


def _names(sets, kinds=None):
    """['P12.L0.H0 (specific)', ...] joined with ' or ': each entry is a separate passing set."""
    return " or ".join(" + ".join(s) + (f" ({kinds[tuple(s)]})" if kinds else "") for s in sets) or "-"


def _threshold_sentence(result, top) -> str:
    """Why the threshold is where it is, from the highest share of pairs `top` (0..1) any control reached;
    when a control reached the threshold itself, says so and what it means instead."""
    tau, ctl = 100 * result["threshold"], result["controls"]
    if 100 * top < tau:
        return (f"The threshold of {tau:.0f}% lies {tau - 100 * top:.0f} points above the highest share of pairs any "
                f"control test reached ({100 * top:.0f}%): on {result['pairs_per_claim']} pairs, a node whose true "
                f"rate were that high would reach the threshold by chance with a binomial probability of "
                f"{_tail(top, result['pairs_per_claim'], tau):.0e}.")
    passed = ctl["unused"]["passed"] + ctl["decoy"]["passed"]
    tests = ctl["unused"]["tests"] + ctl["decoy"]["tests"]
    return (f"**A control reached the threshold** ({100 * top:.0f}% of its pairs): {passed} of {tests} control tests "
            f"passed. An unused node that passes carries the sub-task although ablating it alone breaks nothing "
            f"(another node carries it too); a decoy that passes means the claim's test cannot tell the sub-task "
            f"from the others. Either way the claims of this model are only as sure as that rate.")


def discovery_markdown(result, cfg, figure=None) -> str:
    """The discovery as markdown: definitions, shares, controls, the drawn algorithm (the PNG `figure`, if
    given), a table per answer digit, the nodes left without a purpose. `cfg` is the model's Config."""
    tau, sh, ctl = 100 * result["threshold"], result["shares"], result["controls"]
    top = max(ctl["unused"]["max_share"], ctl["decoy"]["max_share"])
    lines = ["## The algorithm, verified by interventions", "",
             f"Purpose found for **{sh['heads']['strong']} of {sh['heads']['useful']} useful heads "
             f"({sh['heads']['strong_percent']:.0f}%)** and **{sh['MLPs']['strong']} of {sh['MLPs']['useful']} useful "
             f"MLPs ({sh['MLPs']['strong_percent']:.0f}%)**, each by a strong test that its controls fail "
             f"(the successor library's search reached {iv.SUCCESSOR['heads']}% of heads and {iv.SUCCESSOR['MLPs']}% of "
             f"MLPs on its mixed model). {len(result['tests'])} tests on {sum(c['tested'] for c in result['claims'])} "
             f"claims in {result['seconds']:.0f} s ({result['cpu_seconds']:.0f} s CPU).", "",
             DEFINITIONS.format(tau=tau), ""] + ([f"![the verified algorithm]({figure})", ""] if figure else []) + [
             "| useful nodes | count | strong purpose (alone or in a pair) | specific alone | combiner alone | "
             "only in a pair | weak only | none |", "|---|---|---|---|---|---|---|---|"]
    for kind, s in sh.items():
        lines.append(f"| {kind} | {s['useful']} | {s['strong']} ({s['strong_percent']:.0f}%) | {s['specific']} | "
                     f"{s['combiner']} | {s['pair']} | {s['weak']} | {s['none']} |")
    lines += ["", f"**Controls** (a claim counts only if it passes at >= {tau:.0f}% of pairs and its controls fail): "
              "*unused nodes* are nodes at the same positions whose ablation breaks nothing, put through the same "
              "tests; *decoy stores* patch each passing node from a store that keeps the claimed sub-task's digits "
              "and re-draws the rest, so it carries other sub-tasks but not the claimed one.", "",
              "| control | tests | passed (false positives) | rate | highest share of pairs reached |",
              "|---|---|---|---|---|",
              f"| unused nodes | {ctl['unused']['tests']} | {ctl['unused']['passed']} | {ctl['unused']['rate']:.1f}% | "
              f"{100 * ctl['unused']['max_share']:.0f}% |",
              f"| decoy stores | {ctl['decoy']['tests']} | {ctl['decoy']['passed']} | {ctl['decoy']['rate']:.1f}% | "
              f"{100 * ctl['decoy']['max_share']:.0f}% |", "",
              _threshold_sentence(result, top), ""]
    kinds = iv._kinds(result)
    by = {}
    for t in result["tests"]:
        if t["kind"] in ("useful", "pair") and t["verdict"] in ("strong", "weak"):
            by.setdefault((t["claim"], t["verdict"], len(t["nodes"]) > 1), []).append(t["nodes"])
    for k in sorted({c["digit"] for c in result["claims"]}, reverse=True):
        label = "the sign" if k == result["n_digits"] + 1 else f"A{k}"
        lines += [f"### Answer digit {label} (predicted at position {iv.answer_position(k, result['n_digits'])})", "",
                  "| sub-task | pairs | strong, one node | strong, two nodes together | weak |",
                  "|---|---|---|---|---|"]
        for c in [c for c in result["claims"] if c["digit"] == k]:
            if not c["tested"]:
                lines.append(f"| {c['claim'].split('.', 1)[1]} | {c['pairs']} | not tested (too few pairs) | | |")
                continue
            one = by.get((c["claim"], "strong", False), [])
            lines.append(f"| {c['claim'].split('.', 1)[1]} | {c['pairs']} | "
                         f"{_names(one, {tuple(s): kinds[(tuple(s), c['claim'])] for s in one})} | "
                         f"{_names(by.get((c['claim'], 'strong', True), []))} | "
                         f"{_names(by.get((c['claim'], 'weak', False), []) + by.get((c['claim'], 'weak', True), []))}"
                         " |")
        lines.append("")
    lost = [(n, e) for n, e in result["nodes"].items() if e["category"] in ("weak", "none")]
    if lost:
        best = {}
        for t in result["tests"]:
            name = t["nodes"][0]
            if t["kind"] == "useful" and (name not in best or t["strong"] / t["pairs"] > best[name][1]):
                best[name] = (t["claim"], t["strong"] / t["pairs"])
        lines.append("Useful nodes without a strong purpose (their best single test): " + "; ".join(
            f"{n} ({best[n][0]}: {100 * best[n][1]:.0f}%)" if n in best else n for n, _ in lost) + ".")
    return "\n".join(lines) + "\n"

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
        _, cache = model.run_with_cache(tokens, names_filter=[mlp.hook_name])
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
