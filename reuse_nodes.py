"""
Which operations still need each node of a model, by mean ablation: which inserted addition heads and
MLPs a grown add-and-subtract model still uses for addition, for subtraction with a positive answer and
for subtraction with a negative one ("shared" when several), as in "Increasing Trust in Language Models
through the Reuse of Verified Circuits" (the section on the reused addition circuits).

    python reuse_nodes.py unverified/ins1_mix_d6_l3_h4_t1.5K_s1.pt              # every head and MLP
    python reuse_nodes.py unverified/ins1_mix_d6_l3_h4_t1.5K_s1.pt --layers 0 1 --min-correct 50

A node here is a head or an MLP of one layer, ablated at one position at a time (every position that can
affect an answer) with analyse.py's per-layer means and hook. The questions are analyse.py's varied set,
split into addition, subtraction with answer >= 0 and with answer < 0. A node serves a set when its
ablation makes at least one of the set's correctly answered questions wrong (any answer token changes,
the reference notebook's threshold); a set with fewer than `min_correct` correct answers gives no role
(a share of 1 or 2 correct answers proves nothing). Left out on purpose: the reference's tags (impact
strings, complexity classes, attention): they are analyse.py's job; this file only answers "which
operation needs this node".
"""
import sys

import torch
from tqdm import tqdm

import train
from analyse import Node, ablate_nodes, failures, layer_means, operation_classes, question_sets
from model import Config


@torch.inference_mode()
def node_failures(model, task, components, n_questions=300, seed=0, progress=True):
    """Mean-ablate each component (layer, head; head None = the MLP) at each position that can affect an
    answer, one at a time, over the varied set of `task` (n_questions random and as many enriched per
    operation, besides the named sets), split by operation_classes. Returns
    ({(layer, head): {set: [questions broken, per position]}}, {set: questions answered correctly},
     {set: questions})."""
    n = model.cfg.n_digits
    tokens = torch.cat(list(question_sets(task, n, torch.Generator().manual_seed(seed), n_questions).values()))
    sets = operation_classes(tokens, n)                           # {set: (B,) bool}
    ok = ~failures(model, tokens, n).wrong.any(1)                 # (B,) every answer token right
    means = layer_means(model, tokens)
    out = {}
    for layer, head in tqdm(components, desc="node ablation", disable=not progress):
        broken = torch.stack([ok & ablate_nodes(model, tokens, [Node(p, layer, head)], means).wrong.any(1)
                              for p in range(3 * n + 3)])         # (positions, B); the last token predicts nothing
        out[(layer, head)] = {k: (broken & mask).sum(1).tolist() for k, mask in sets.items()}
    return out, {k: int((ok & mask).sum()) for k, mask in sets.items()}, {k: int(mask.sum()) for k, mask in sets.items()}


def node_usage(model, task, components, n_questions=300, seed=0, min_correct=20, progress=True):
    """Rows {node ('L1H0'), layer, head, role, serves, broken {set: most questions broken at one position},
    max_fail {set: that as a share of the set's correct answers}, positions {set: positions that break it}}
    and the baseline {set: accuracy}, {set: correct answers}. role: add, sub, neg, shared (two or more)
    or unused; sets with fewer than `min_correct` correct answers are not counted."""
    fails, correct, total = node_failures(model, task, components, n_questions, seed, progress)
    rows = []
    for (layer, head), per_set in fails.items():
        serves = [k for k, f in per_set.items() if max(f) > 0 and correct[k] >= min_correct]
        role = serves[0] if len(serves) == 1 else "shared" if serves else "unused"
        rows.append(dict(node=Node(0, layer, head).component, layer=layer, head=head, role=role, serves=serves,
                         broken={k: max(f) for k, f in per_set.items()},
                         max_fail={k: max(f) / max(1, correct[k]) for k, f in per_set.items()},
                         positions={k: [p for p, v in enumerate(f) if v > 0] for k, f in per_set.items()}))
    return rows, {k: correct[k] / total[k] for k in total}, correct


def inserted_node_usage(model, src_cfg: Config, layers_offset: int, n_questions=300, seed=0, progress=True,
                        min_correct=20):
    """node_usage of the inserted nodes (the source's heads and MLPs, at their new layers) of a grown
    add-and-subtract model. Returns (rows, baseline accuracy per set)."""
    components = [(layers_offset + i, h) for i in range(src_cfg.n_layers) for h in [*range(src_cfg.n_heads), None]]
    rows, base, _ = node_usage(model, "mix", components, n_questions, seed + 2_000_003, min_correct, progress)
    return rows, base


def usage_table(rows, base, correct=None) -> str:
    """A text table: per node and set, the questions broken at the worst position (count and % of the
    set's correct answers), the role, and the positions whose ablation breaks something."""
    sets = list(base)
    lines = [f"{'node':<8}" + "".join(f"{k + ' broken':>18}" for k in sets) + "  role     positions (P) where ablation breaks it",
             f"{'(none)':<8}" + "".join(f"{f'acc {100 * base[k]:.1f}%' + (f' ({correct[k]})' if correct else ''):>18}"
                                        for k in sets)]
    for r in rows:
        pos = sorted({p for v in r["positions"].values() for p in v})
        lines.append(f"{r['node']:<8}" + "".join(f"{r['broken'][k]:>9} ({100 * r['max_fail'][k]:5.1f}%)" for k in sets)
                     + f"  {r['role']:<8} {' '.join(map(str, pos)) or '-'}")
    return "\n".join(lines)


def useful_source_heads(src, n_questions=300, seed=0, progress=True):
    """The source's heads {(layer, head)} whose ablation (at some position) breaks an addition answer:
    freeze-useful's default when no --nodes file is given."""
    components = [(layer, h) for layer in range(src.cfg.n_layers) for h in range(src.cfg.n_heads)]
    fails, _, _ = node_failures(src, "add", components, n_questions, seed + 2_000_003, progress)
    return {c for c, f in fails.items() if max(f["add"]) > 0}


def main(argv=None):
    p = train.Parser(prog="reuse_nodes.py", description="Which operations (addition, subtraction with answer "
                     ">= 0, < 0) still need each head and MLP of a model, by mean ablation.")
    p.add_argument("checkpoint", help="a .pt written by train.py or reuse.py")
    p.add_argument("--layers", type=int, nargs="+", help="only these layers (default: every layer)")
    p.add_argument("--questions", type=train.positive(int), default=300,
                   help="random and enriched questions per operation in the varied set (default 300)")
    p.add_argument("--min-correct", type=int, default=20,
                   help="correct answers a set needs before it can give a node a role (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the questions (default 0)")
    p.add_argument("--task", choices=["add", "sub", "mix"], help="the model's task (default: what the checkpoint says)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    args = p.parse_args(argv)
    model, _, task = train.open_checkpoint(p, args.checkpoint, args.task)
    cfg = model.cfg
    if args.layers and not all(0 <= layer < cfg.n_layers for layer in args.layers):
        p.error(f"--layers must be between 0 and {cfg.n_layers - 1} for this {cfg.n_layers}-layer model")
    train.set_threads(cfg)
    components = [(layer, h) for layer in (args.layers or range(cfg.n_layers)) for h in [*range(cfg.n_heads), None]]
    rows, base, correct = node_usage(model, task, components, args.questions, args.seed, args.min_correct,
                                     not args.no_progress)
    print(usage_table(rows, base, correct))
    return 0


if __name__ == "__main__":
    sys.exit(main())
