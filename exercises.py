"""
Graded exercises (EXERCISES.md): fill in a stub below, then check it against the project's own code.

    python exercises.py 3              # check exercise 3: PASS, or the first mismatch and a hint
    python exercises.py --solutions    # every check run on exercise_solutions.py (must pass)

Each checker is `check_N(fn) -> (ok, message)`: it feeds `fn` random and hand-made inputs and compares with
the reference (exercise_solutions.py, thin wrappers over model.py, data.py, train.py, analyse.py,
algorithm.py, interventions.py, reuse.py) and with an independent oracle where one is cheap (Python
integers, the model's hook points, torch.pca_lowrank, the source model's logits, the framework's
prediction). Left out on purpose: grading plots and prose (the questions in EXERCISES.md are for you).
"""
import copy
import functools
import glob
import os
import sys

import torch

import data
import exercise_solutions as ref
from model import Config, Transformer, load_model

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "checkpoints", "tiny", "add_d3_l2_h3_t1K_s0.pt")  # 3-digit adder, 100% right

# ============================================================================= your code: the stubs


def ex1_read_answer(tokens, n_digits):
    """tokens (B, 3n+4) whole questions, e.g. encode('12345+33333=+045678') -> (B,) int64 signed answers
    read from the answer tokens `sign A(n)..A0` (45678 here; -249990 for '550030-800020=-0249990')."""
    raise NotImplementedError


def ex2_attention(attn, x):
    """attn: a model.Attention (W_Q, W_K, W_V [H, C, D], b_Q, b_K, b_V [H, D], mask [P, P] bool);
    x: (B, P, C), the output of the block's ln1. Returns (pattern (B, H, P, P) query x key, rows summing
    to 1 over the keys a query may see, and z (B, P, H, D) = pattern @ v per head)."""
    raise NotImplementedError


def ex3_answer_nll(logits, tokens, n_digits):
    """logits (B, P, V) of whole questions, tokens (B, P) -> (B, n+2): the negative log-probability the model
    gives each true answer token (sign, A(n)..A0), and nothing else."""
    raise NotImplementedError


def ex4_cascade_length(tokens, n_digits):
    """Addition questions (B, P) -> (B,) int64: -1 when no column makes a carry (sum >= 10); else the largest
    number of sum-9 columns directly above a carry-making column, which pass its carry on (cap at 4)."""
    raise NotImplementedError


def ex5_complexity(tokens, n_digits):
    """Addition or subtraction questions (B, P) -> (B,) int64 index into data.COMPLEXITY
    (S0..S5, M0..M4+, N1..N4+), as defined in data.complexity's docstring and EXERCISES.md."""
    raise NotImplementedError


def ex6_ablate_head(model, tokens, means, position, layer, head):
    """Mean-ablate one head at one position: replace hook_z[:, position, head] of `layer` by
    means[f'blocks.{layer}.attn.hook_z'][position, head] (analyse.layer_means). Returns wrong (B, n+2)
    bool: which answer tokens (sign, A(n)..A0) the model now gets wrong (argmax != true token)."""
    raise NotImplementedError


def ex7_pca(X, k):
    """X (N, C) -> (projections (N, k), components (k, C) unit rows, explained-variance ratios (k,)),
    by hand with torch.linalg.svd. Each component is defined up to its sign."""
    raise NotImplementedError


def ex8_patch(model, store, alter, nodes):
    """Interchange intervention: run `alter` (B, P) with the activation of every node (position, layer, head)
    copied from the run of `store` (B, P), question by question; head == n_heads means the MLP (hook_post),
    else the head's hook_z. Returns the predicted answer tokens (B, n+2)."""
    raise NotImplementedError


def ex9_grow(src, n_layers, n_heads):
    """A new Transformer with src's config but n_layers layers and n_heads heads (>= src's), src's weights
    inserted into its first layers and heads, that answers every question exactly as src does."""
    raise NotImplementedError


def ex10_carry_node(model):
    """Open-ended: the node (position, layer, head) -- or a list of at most two -- of the 6-digit addition
    model that computes the carry cascaded into answer digit A5 (head == n_heads means the MLP)."""
    raise NotImplementedError

# ============================================================================= checkers


def graded(check):
    """Turn an exception in the student's code into a failed check with a one-line message."""
    @functools.wraps(check)
    def run(fn, *args, **kw):
        try:
            return check(fn, *args, **kw)
        except NotImplementedError:
            return False, "not implemented yet: fill in the stub in exercises.py (see EXERCISES.md)"
        except Exception as e:  # most often the student's code: say what stopped the check, in one line
            return False, f"the check stopped on {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    return run


@functools.lru_cache(maxsize=None)
def model_at(path):
    return load_model(path)[0]


def carry_checkpoint():
    """Exercise 10's model: the shipped 6-digit adder, else the 5-digit one (whichever is there)."""
    for pattern in ("add_d6_*.pt", "add_d5_*.pt"):
        found = sorted(glob.glob(os.path.join(HERE, "checkpoints", pattern)))
        if found:
            return found[0]
    raise FileNotFoundError("no checkpoints/add_d6_*.pt or add_d5_*.pt to search")


def shape_error(got, want, what):
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        got = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        return f"{what}: expected a tensor of shape {tuple(want.shape)}, got {got}"


def questions(op, n, count, seed, enrichment=True):
    return data.random_batch(op, n, count, torch.Generator().manual_seed(seed), enrichment=enrichment)


def first_wrong_question(got, want, tokens, n, show=lambda v: v.tolist()):
    """'12+34=+046: expected 46, got 64' for the first row where got != want, else None."""
    for i in (got != want).reshape(len(want), -1).any(1).nonzero()[:1, 0].tolist():
        return f"{data.decode(tokens[i])[:2 * n + 1]}: expected {show(want[i])}, got {show(got[i])}"


@graded
def check_1(fn):
    for n, text in ((5, "12345+33333=+045678"), (6, "550030-800020=-0249990"), (5, "99999+00001=+100000"),
                    (3, "000-999=-0999"), (3, "000+000=+0000")):
        want = int(text.split("=")[1])  # Python reads the signed number: the oracle
        got = fn(data.encode(text)[None], n)
        if shape_error(got, torch.zeros(1), text) or int(got[0]) != want:
            hint = ("the answer digits are written most significant first" if str(abs(want)).strip("0")[::-1] in
                    str(got.tolist()) else "the sign token decides the sign; the n+1 digits after it, the size")
            return False, f"{text}: expected {want}, got {got.tolist()} ({hint})"
    for n in (2, 4, 6):
        toks = torch.cat([questions(op, n, 300, n) for op in ("add", "sub")])
        got, want = fn(toks, n), ref.ex1_read_answer(toks, n)
        msg = shape_error(got, want, f"{n}-digit questions") or first_wrong_question(got, want, toks, n)
        if msg:
            return False, msg + " (look at data.answer_slice: where do the n+2 answer tokens sit?)"
    return True, "reads every answer, signed, at any number of digits"


def small_random_model(seed=0):
    """An untrained model with random biases, so a forgotten b_Q, b_K or b_V shows."""
    model = Transformer(Config(n_digits=2, d_model=32, d_head=8, d_mlp=64), torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in (p for name, p in model.named_parameters() if ".b_" in name):
            p.normal_(0, 0.5, generator=g)
    return model.eval()


@graded
def check_2(fn):
    for model in (model_at(TINY), small_random_model()):
        n = model.cfg.n_digits
        toks = questions("add", n, 64, 2)
        with torch.no_grad():
            _, cache = model.run_with_cache(toks)  # the oracle: the model's own hook points
            for i, block in enumerate(model.blocks):
                x = block.ln1(cache[f"blocks.{i}.hook_resid_pre"])
                pattern, z = fn(block.attn, x)
                want_p, want_z = cache[f"blocks.{i}.attn.hook_pattern"], cache[f"blocks.{i}.attn.hook_z"]
                where = f"layer {i} of a {n}-digit model"
                err = shape_error(pattern, want_p, f"pattern, {where}") or shape_error(z, want_z, f"z, {where}")
                if err:
                    return False, err + " (pattern is (B, H, P, P) query x key; z is (B, P, H, D))"
                above = torch.triu(torch.ones_like(pattern[0, 0], dtype=torch.bool), 1)
                if pattern[..., above].abs().max() > 1e-6:
                    return False, (f"pattern, {where}: a query attends to later positions: mask the scores "
                                   "above the diagonal with -inf before the softmax")
                if not torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-5):
                    return False, (f"pattern, {where}: rows do not sum to 1: softmax over the keys (dim=-1) "
                                   "after masking, not before")
                if not torch.allclose(pattern, want_p, atol=1e-5):
                    return False, (f"pattern, {where}: max error {(pattern - want_p).abs().max():.2g}: scores are "
                                   "q . k / sqrt(d_head), with q and k including b_Q and b_K")
                if not torch.allclose(z, want_z, atol=1e-5):
                    return False, f"z, {where}: error {(z - want_z).abs().max():.2g}: z = pattern @ v, v = x W_V + b_V"
    return True, "pattern and z equal the model's hook_pattern and hook_z in every layer"


@graded
def check_3(fn):
    model = model_at(TINY)
    n = model.cfg.n_digits
    g = torch.Generator().manual_seed(3)
    toks = questions("add", n, 256, 3)
    with torch.no_grad():
        cases = [("the 3-digit model's logits", model(toks), toks),
                 ("random logits", torch.randn(100, data.n_ctx(5), 15, generator=g) * 3, questions("sub", 5, 100, 4))]
        for what, logits, t in cases:
            nd = (t.shape[1] - 4) // 3
            got, want = fn(logits, t, nd), ref.ex3_answer_nll(logits, t, nd)
            err = shape_error(got, want, what)
            if err:
                return False, err + ": one loss per question and answer token (sign, A(n)..A0), not per position"
            if not torch.allclose(got.double(), want, rtol=1e-4, atol=1e-5):
                shifted = ref.ex3_answer_nll(logits[:, data.answer_slice(nd)], t, nd)
                hint = ("off by one: the logits at position p predict token p+1 (data.logit_slice)"
                        if torch.allclose(got.double(), shifted, rtol=1e-4, atol=1e-5)
                        else "NLL = -log_softmax(logits)[true token], at the positions that predict the answer")
                return False, f"{what}: max error {(got.double() - want).abs().max():.2g} ({hint})"
        per_digit = fn(model(toks), toks, n).mean(0)
    names = ["sign"] + [f"A{i}" for i in range(n, -1, -1)]
    return True, "loss per answer token of the 3-digit model: " + ", ".join(
        f"{a} {v:.1e}" for a, v in zip(names, per_digit.tolist()))


HAND_CASCADES = {-1: "000+000 123+456 444+555 0+0", 0: "005+005 550+050 190+010 918+181", 1: "095+005 990+010 149+051",
                 2: "995+005 551+449 901+099"}  # 3 digits: the most sum-9 columns above column 0 is 2


@graded
def check_4(fn):
    for length, text in HAND_CASCADES.items():
        pairs = torch.tensor([[int(v) for v in q.split("+")] for q in text.split()])
        toks = data.make_questions(pairs[:, 0], pairs[:, 1], "add", 3)
        msg = first_wrong_question(fn(toks, 3), torch.full((len(toks),), length), toks, 3)
        if msg:
            return False, msg + " (count the sum-9 columns directly above a column whose sum is >= 10)"
    for n, seed, enrich in ((3, 0, False), (5, 1, True), (5, 2, False)):
        toks = questions("add", n, 2000, seed, enrich)
        got, want = fn(toks, n), ref.ex4_cascade_length(toks, n)
        msg = shape_error(got, want, f"{n} digits") or first_wrong_question(got, want, toks, n)
        if msg:
            return False, msg
    counts = [int((fn(questions("add", 5, 100_000, 9, e), 5) >= 4).sum()) for e in (False, True)]
    return True, (f"4-level carry cascades in 100,000 fresh 5-digit questions: {counts[0]} without enrichment, "
                  f"{counts[1]} with it")


@graded
def check_5(fn):
    for name, toks in data.named_sets("mix", 5).items():  # each hand-made set has its class in its name
        if name.endswith(("S0", "S1", "S2", "S3", "S4", "S5", "M0", "M1", "M2", "M3")):
            want = torch.full((len(toks),), data.COMPLEXITY.index(name.split(".")[1]))
            msg = first_wrong_question(fn(toks, 5), want, toks, 5, lambda c: data.COMPLEXITY[int(c)])
            if msg:
                return False, f"{name}: {msg}"
    everything = torch.cat([__import__("evaluate").all_questions(op, 2) for op in ("add", "sub")])
    for n, toks in ((2, everything), (5, torch.cat([questions(op, 5, 3000, 5) for op in ("add", "sub")]))):
        got, want = fn(toks, n), ref.ex5_complexity(toks, n)
        msg = shape_error(got, want, f"{n} digits") or first_wrong_question(
            got, want, toks, n, lambda c: data.COMPLEXITY[int(c)])
        if msg:
            return False, msg + " (negative answers are N classes; their cascades stop at the top non-zero digit)"
    return True, "every class right on all 20,000 2-digit questions, random 5-digit ones and the named sets"


@graded
def check_6(fn):
    import analyse
    model = model_at(TINY)
    n, H = model.cfg.n_digits, model.cfg.n_heads
    toks = analyse.varied_questions("add", n, torch.Generator().manual_seed(6), size=128)
    means = analyse.layer_means(model, toks)
    labels = ["sign"] + [f"A{i}" for i in range(n, -1, -1)]
    seen = []
    for pos in range(data.logit_slice(n).start, data.logit_slice(n).stop):
        for layer in range(model.cfg.n_layers):
            for head in range(H):
                args = (model, toks, means, pos, layer, head)
                got, want = fn(*args), ref.ex6_ablate_head(*args)
                node = f"P{pos}.L{layer}.H{head}"
                msg = shape_error(got, want, node) or first_wrong_question(got, want, toks, n, lambda w: (
                    " ".join(a for a, x in zip(labels, w.tolist()) if x) or "nothing") + " wrong")
                if msg:
                    return False, (f"ablating {node}: {msg} (replace only hook_z[:, {pos}, {head}] of layer "
                                   f"{layer}, by its mean, not zero)")
                seen.append((-int(want.any(1).sum()), f"{node} breaks " + " ".join(
                    f"{a} ({k})" for a, k in zip(labels, want.sum(0).tolist()) if k)))
    top = "; ".join(s for k, s in sorted(seen)[:3] if k)
    return True, f"same wrong answer tokens as the reference for every head; worst of {len(toks)} questions: {top}"


def align_signs(got, want):
    """Flip each component of `got` (columns of projections) to the sign that best matches `want`."""
    return got * torch.sign((got * want).sum(0, keepdim=True) + 1e-30)


@graded
def check_7(fn):
    import algorithm
    g = torch.Generator().manual_seed(7)
    X = torch.randn(300, 4, generator=g) * torch.tensor([6.0, 3.0, 1.5, 0.5]) @ torch.randn(4, 24, generator=g) + 5.0
    model = model_at(TINY)
    toks, labels = algorithm.tricase_questions("add", 3, 1, 100, g)  # column 1: sums 0-8 / 9 / 10-18
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names=lambda s: s.endswith("hook_result"))
    heads = {f"P9.L{l}.H{h}": cache[f"blocks.{l}.attn.hook_result"][:, 9, h] for l in range(2) for h in range(3)}
    for what, A in [("off-centre random data", X)] + list(heads.items()):
        proj, comps, evr = fn(A, 3)
        want = ref.ex7_pca(A, 3)
        err = (shape_error(proj, want[0], f"{what}: projections") or shape_error(comps, want[1], f"{what}: components")
               or shape_error(evr, want[2], f"{what}: ratios"))
        if err:
            return False, err
        if not torch.allclose(align_signs(proj, want[0]), want[0], atol=1e-3 * want[0].abs().max()):
            return False, f"{what}: projections differ (centre X first, then project it on the top k right singular axes)"
        if not torch.allclose(align_signs(comps.T, want[1].T), want[1].T, atol=1e-3):
            return False, f"{what}: components differ (the rows of Vh from torch.linalg.svd of the centred X)"
        if not torch.allclose(evr, want[2], atol=1e-4):
            return False, f"{what}: ratios {evr.tolist()} vs {want[2].tolist()} (S^2 over the sum of all S^2)"
    _, _, V = torch.pca_lowrank(X, q=3, center=True, niter=6)  # an independent oracle for the axes
    if (fn(X, 3)[1] @ V).abs().diagonal().min() < 0.99:
        return False, "your components are not torch.pca_lowrank's axes"
    read = []  # tri-state: the 3 classes separate in the PC1-PC2 plane; bi-state: two merged vs the third
    for name, A in heads.items():
        proj = fn(A, 2)[0]
        acc3 = algorithm.centroid_accuracy(proj, labels)
        merged = (torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]))  # 8+9 vs 10 (makes a carry), 8 vs 9+10
        acc2 = max(algorithm.centroid_accuracy(proj, m[labels]) for m in merged)
        read.append(f"{name} {acc3:.2f}/{acc2:.2f} {'tri' if acc3 >= 0.95 else 'bi' if acc2 >= 0.95 else 'none'}")
    return True, "column 1 tri-case, 3-class/2-class accuracy in PC1-PC2: " + ", ".join(read)


@graded
def check_8(fn):
    import interventions as iv
    model = model_at(TINY)
    n, H = model.cfg.n_digits, model.cfg.n_heads
    store, alter, want = iv.claim_pairs(model, "SA", 1, 60, torch.Generator().manual_seed(8))
    last = 3 * n + 2 - 1  # the position that predicts A1
    every = [node for node in iv.all_nodes(model.cfg) if node[0] == last]
    claims = [every, [(last, 1, H)], [(last, 0, 0), (last - 1, 0, 1)], [(last - 1, 1, H)], [(0, 0, 0)]]
    for nodes in claims:
        got, exp = fn(model, store, alter, nodes), ref.ex8_patch(model, store, alter, nodes)
        names = " + ".join(iv.node_name(x, H) for x in nodes)
        msg = shape_error(got, exp, names) or first_wrong_question(got, exp, alter, n, data.decode)
        if msg:
            return False, (f"patching {names}: {msg} (copy the store's hook_z[:, position, head] or "
                           "hook_post[:, position] into the alter run at the same position)")
    ok = [int((fn(model, store, alter, c) == want).all(1).sum()) for c in (every, [(0, 0, 0)])]
    if ok[0] != len(alter) or ok[1] != 0:
        return False, f"the claims gave {ok[0]} and {ok[1]} of {len(alter)} (expected all, then none)"
    return True, (f"'every node at P{last} carries A1's base add' passes {ok[0]}/{len(alter)} pairs; "
                  f"'P0.L0.H0 does' passes {ok[1]}/{len(alter)}, as it must (P0 sees only D2)")


@graded
def check_9(fn):
    src = model_at(TINY)
    n = src.cfg.n_digits
    toks = torch.cat([questions(op, n, 300, 9) for op in ("add", "sub")])
    with torch.no_grad():
        before = src(toks)[:, data.logit_slice(n)]
    for L, H in ((3, 4), (4, 5), (2, 3)):
        model = fn(copy.deepcopy(src), L, H)  # a copy: the cached source must survive a grow that edits it
        if (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model) != (L, H, src.cfg.d_model):
            return False, f"asked for {L} layers x {H} heads, got {model.cfg.n_layers} x {model.cfg.n_heads}"
        if not torch.equal(model.blocks[0].attn.W_Q[:src.cfg.n_heads], src.blocks[0].attn.W_Q):
            return False, f"{L}x{H}: layer 0's heads 0-2 are not the source's (reuse.target_of says where each goes)"
        with torch.no_grad():
            diff = (model(toks)[:, data.logit_slice(n)] - before).abs().max().item()
        if diff > 1e-4:
            return False, (f"{L}x{H}: answer logits differ from the source's by up to {diff:.2g}: the new heads and "
                           "layers must write zero into the residual stream (W_O; new layers' b_O, W_out, b_out)")
    return True, "grown 3x4, 4x5 and 2x3 models give the source's answer logits on add and sub (to 1e-4)"


@graded
def check_10(fn, checkpoint=None, n_pairs=100, min_share=0.9):
    import interventions as iv
    path = checkpoint or carry_checkpoint()
    model = model_at(path)
    H = model.cfg.n_heads
    nodes = fn(model)
    nodes = [tuple(nodes)] if len(nodes) == 3 and all(isinstance(v, int) for v in nodes) else [tuple(x) for x in nodes]
    if not 1 <= len(nodes) <= 2 or any(not (0 <= p < model.cfg.n_ctx and 0 <= l < model.cfg.n_layers and 0 <= h <= H)
                                       for p, l, h in nodes):
        return False, f"return one node (position, layer, head) or a list of two, inside the model; got {nodes}"
    store, alter, want = iv.claim_pairs(model, "ST", 5, n_pairs, torch.Generator().manual_seed(10))
    passes, total = iv.test_claim(model, store, alter, want, nodes)
    names = " + ".join(iv.node_name(x, H) for x in nodes)
    verdict = (f"patching {names} from the store moves A5 as a cascaded carry predicts on {passes}/{total} pairs "
               f"({os.path.basename(path)})")
    if passes < min_share * total:
        return False, verdict + f": below {100 * min_share:.0f}% (which position predicts A5? which layer sees the carry?)"
    return True, verdict

# ============================================================================= command line


CHECKS = {i: globals()[f"check_{i}"] for i in range(1, 11)}
STUBS = {i: next(v for k, v in globals().items() if k.startswith(f"ex{i}_")) for i in CHECKS}
SOLUTIONS = {i: next(v for k, v in vars(ref).items() if k.startswith(f"ex{i}_")) for i in CHECKS}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(1)
    if argv == ["--solutions"]:
        todo = [(i, SOLUTIONS[i]) for i in CHECKS]
    elif len(argv) == 1 and argv[0].isdigit() and int(argv[0]) in CHECKS:
        todo = [(int(argv[0]), STUBS[int(argv[0])])]
    else:
        print(f"exercises.py: error: expected an exercise number 1-{len(CHECKS)} or --solutions, got "
              f"{' '.join(argv) or 'nothing'}", file=sys.stderr)
        return 2
    failed = 0
    for i, fn in todo:
        ok, message = CHECKS[i](fn)
        print(f"exercise {i}: {'PASS' if ok else 'FAIL'}: {message}", flush=True)
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
