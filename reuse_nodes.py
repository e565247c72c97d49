"""
Which nodes of a model an operation still needs, by mean ablation: reuse.py's report of what the inserted
addition heads and MLPs do after training on add + sub (the paper's "shared" nodes).

    from reuse_nodes import inserted_node_usage, usage_table
    rows, base = inserted_node_usage(model, src_cfg, layers_offset=0)
    print(usage_table(rows, base))

A node is a head (layer, h) or an MLP (layer, None) at one position. Each is replaced by its per-layer mean
over the questions (SPEC decision 4), one node and position at a time, and a question fails when any
answer token changes. The question sets are addition, subtraction with answer >= 0 and with answer < 0.
When analyse.py (issue 4) is there, its `ablate_nodes` and `layer_means` do the ablation; otherwise the
minimal hook here does. Left out on purpose: the reference's tags (impact strings, complexity classes, attention):
they are analyse.py's job; this file only answers "which operation needs this node".
"""
from functools import partial

import torch
from tqdm import tqdm

import data
from model import Config


def question_sets(n_digits, n_questions, gen, ops=("add", "sub", "neg")):
    """{add, sub (answer >= 0), neg (answer < 0)}: n_questions fresh questions each, drawn in batches of 32
    so that, as in training, some batches are enriched and some are not (one coin per batch)."""
    sets = {}
    if "add" in ops:
        sets["add"] = torch.cat([data.random_batch("add", n_digits, 32, gen) for _ in range(-(-n_questions // 32))])
        sets["add"] = sets["add"][:n_questions]
    if "sub" in ops or "neg" in ops:
        pos, neg = [], []
        while sum(map(len, pos)) < n_questions or sum(map(len, neg)) < n_questions:
            t = data.random_batch("sub", n_digits, 32, gen)
            is_neg = t[:, 2 * n_digits + 2] == data.MINUS
            pos.append(t[~is_neg])
            neg.append(t[is_neg])
        sets.update(sub=torch.cat(pos)[:n_questions], neg=torch.cat(neg)[:n_questions])
    return {k: v for k, v in sets.items() if k in ops}


def _correct(logits, tokens, n_digits):
    return (logits[:, data.logit_slice(n_digits)].argmax(-1) == tokens[:, data.answer_slice(n_digits)]).all(1)


def _mean_ablate(mean, pos, head, x, hook):
    """Replace one node's activation at one position by its mean: hook_z (B,P,H,D) or hook_post (B,P,M)."""
    x = x.clone()
    if head is None:
        x[:, pos] = mean[pos]
    else:
        x[:, pos, head] = mean[pos, head]
    return x


def _analyse():
    """analyse.py's ablation (issue 4) when it is there: the same per-layer means, one hook for every node."""
    try:
        import analyse
    except ImportError:
        return None
    return analyse if all(hasattr(analyse, f) for f in ("ablate_nodes", "layer_means", "failures")) else None


@torch.inference_mode()
def node_failures(model, n_digits, nodes, sets, progress=True, use_analyse=True):
    """Mean-ablate each node (layer, head; head None = the MLP) at each position that can affect an answer,
    one at a time, with per-layer means over all `sets` questions (SPEC decision 4); through analyse.py's
    `ablate_nodes` when it is there (and use_analyse), else with the minimal hook here. Returns
    ({node: {set: [share of the set's correctly answered questions that fail, per position]}},
     {set: accuracy without ablation})."""
    tokens = torch.cat(list(sets.values()))
    owner = torch.cat([torch.full((len(t),), i) for i, t in enumerate(sets.values())])
    ok0 = _correct(model(tokens), tokens, n_digits)
    base = {k: ok0[owner == i].float().mean().item() for i, k in enumerate(sets)}
    positions = range(3 * n_digits + 3)  # the last token predicts nothing
    an = _analyse() if use_analyse else None
    if an is not None:
        means = an.layer_means(model, tokens)

        def broken(layer, head, p):
            return an.ablate_nodes(model, tokens, [an.Node(p, layer, head)], means).wrong.any(1)
    else:
        names = {(l, h): f"blocks.{l}.mlp.hook_post" if h is None else f"blocks.{l}.attn.hook_z" for l, h in nodes}
        _, cache = model.run_with_cache(tokens, names=sorted(set(names.values())))
        means = {k: v.mean(0) for k, v in cache.items()}  # (P, H, D) or (P, M)

        def broken(layer, head, p):
            name = names[(layer, head)]
            logits = model.run_with_hooks(tokens, [(name, partial(_mean_ablate, means[name], p, head))])
            return ~_correct(logits, tokens, n_digits)
    out = {}
    for layer, head in tqdm(nodes, desc="node ablation", disable=not progress):
        fails = torch.stack([ok0 & broken(layer, head, p) for p in positions])  # (positions, B)
        out[(layer, head)] = {k: [(fails[p] & (owner == i)).sum().item() / max(1, (ok0 & (owner == i)).sum().item())
                                  for p in positions] for i, k in enumerate(sets)}
    return out, base


def node_name(layer, head):
    return f"L{layer}{'MLP' if head is None else f'H{head}'}"


def inserted_node_usage(model, src_cfg: Config, layers_offset: int, n_questions=300, seed=0, progress=True,
                        use_analyse=True):
    """For every inserted node (the source's heads and MLPs, at their new layers): which operations still
    need it after training. A node serves a set when mean-ablating it at some position makes at least one
    correctly answered question of that set wrong (the reference's threshold). role: add, sub, neg,
    shared (two or more) or unused. Returns (rows, baseline accuracy per set)."""
    gen = torch.Generator().manual_seed(seed + 2_000_003)
    sets = question_sets(src_cfg.n_digits, n_questions, gen)
    nodes = [(layers_offset + i, h) for i in range(src_cfg.n_layers) for h in [*range(src_cfg.n_heads), None]]
    fails, base = node_failures(model, src_cfg.n_digits, nodes, sets, progress, use_analyse)
    rows = []
    for (layer, head), per_set in fails.items():
        serves = [k for k, f in per_set.items() if max(f) > 0]
        role = serves[0] if len(serves) == 1 else "shared" if serves else "unused"
        rows.append(dict(node=node_name(layer, head), layer=layer, head=head, role=role, serves=serves,
                         max_fail={k: max(f) for k, f in per_set.items()},
                         positions={k: [p for p, v in enumerate(f) if v > 0] for k, f in per_set.items()}))
    return rows, base


def usage_table(rows, base) -> str:
    sets = list(base)
    lines = [f"{'node':<8}" + "".join(f"{k + ' fail':>11}" for k in sets) + "  role     positions (P) where ablation breaks it",
             f"{'(none)':<8}" + "".join(f"{f'acc {100 * base[k]:.1f}%':>11}" for k in sets)]
    for r in rows:
        pos = sorted({p for v in r["positions"].values() for p in v})
        lines.append(f"{r['node']:<8}" + "".join(f"{100 * r['max_fail'][k]:>10.1f}%" for k in sets)
                     + f"  {r['role']:<8} {' '.join(map(str, pos)) or '-'}")
    return "\n".join(lines)


def useful_source_heads(src, n_questions=300, seed=0, progress=True):
    """The source's heads whose ablation (at some position) breaks an addition answer: freeze-useful's
    default when no --nodes file is given."""
    sets = question_sets(src.cfg.n_digits, n_questions, torch.Generator().manual_seed(seed + 2_000_003), ("add",))
    nodes = [(l, h) for l in range(src.cfg.n_layers) for h in range(src.cfg.n_heads)]
    fails, _ = node_failures(src, src.cfg.n_digits, nodes, sets, progress)
    return {node for node, f in fails.items() if max(f["add"]) > 0}
