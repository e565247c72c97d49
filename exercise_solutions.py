"""
Reference solutions to the exercises in EXERCISES.md: each one a thin wrapper over the project's own code,
so there is one implementation of everything and the wrapper shows where it lives.

    python exercises.py --solutions          # every checker in exercises.py, run on these

Read these after trying an exercise, not before. Left out on purpose: any second implementation of the
project's functions (a copy would drift from the code the checkers trust).
"""
from dataclasses import replace

import torch

import analyse
import data
import interventions as iv
import reuse
import evaluate


def ex1_read_answer(tokens, n_digits):
    """data.answer_slice says where `sign A(n)..A0` sits; data.read_answer turns it into signed ints."""
    return data.read_answer(tokens[:, data.answer_slice(n_digits)])


def ex2_attention(attn, x):
    """Run the project's Attention.forward and read its hook points hook_pattern and hook_z."""
    got = {}
    grabs = {name: (lambda t, hook, name=name: got.__setitem__(name, t)) for name in ("pattern", "z")}
    for name, fn in grabs.items():
        getattr(attn, "hook_" + name).fns.append(fn)
    try:
        attn(x)
    finally:  # hooks are always removed, as model.hooks() does
        for name, fn in grabs.items():
            getattr(attn, "hook_" + name).fns.remove(fn)
    return got["pattern"], got["z"]


def ex3_answer_nll(logits, tokens, n_digits):
    return evaluate.answer_nll(logits, tokens, n_digits)


def ex4_cascade_length(tokens, n_digits):
    """data.complexity's addition classes are S0 (no carry) then S1 + cascade length."""
    return data.complexity(tokens, n_digits) - 1


def ex5_complexity(tokens, n_digits):
    return data.complexity(tokens, n_digits)


def ex6_ablate_head(model, tokens, means, position, layer, head):
    node = dict(position=position, layer=layer, head=head)
    return analyse.ablate_nodes(model, tokens, [node], means, kind="mean").wrong


def ex7_pca(X, k):
    from algorithm import pca  # algorithm.py selects the Agg backend on import
    return pca(X, k)


def ex8_patch(model, store, alter, nodes):
    return iv.intervene(model, store, alter, [list(nodes)])[0]


def ex9_grow(src, n_layers, n_heads):
    cfg = replace(src.cfg, n_layers=n_layers, n_heads=n_heads)
    return reuse.grow(src, cfg, preserve=True)[0].eval()


def ex10_carry_node(model, n_pairs=40, seed=0):
    """The search interventions.discover runs for every claim, run for one: sub-task ST of digit A5."""
    k, n = 5, model.cfg.n_digits
    store, alter, want = iv.claim_pairs(model, "ST", k, n_pairs, torch.Generator().manual_seed(seed))
    candidates = [c for c in iv.all_nodes(model.cfg) if c[0] <= 3 * n + 2 - k]  # nodes that can reach A5
    sets, (best, _), _ = iv._search_one(model, store, alter, want, k, candidates, max_movers=24)
    return (sets or [best])[0]
