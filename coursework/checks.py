"""
The checkers of the coursework: `check_N(fn) -> (ok, message)` runs a student's function for exercise N on
random and hand-made inputs and compares it with the reference (coursework/solutions.py, thin wrappers over
the project's code) and with an independent oracle where one is cheap (Python integers, the model's hook
points, torch.pca_lowrank, the source model's logits, the framework's prediction). Every exception in the
student's code becomes a failed check with a one-line message. Left out on purpose: grading plots and prose
(the questions in coursework/README.md are for the student).

    from coursework import checks, solutions
    checks.check_3(solutions.ex3_answer_nll)    # (True, 'loss per answer token of the 3-digit model: ...')
"""
import copy
import functools
import os

import torch

import algorithm
import analyse
import data
import evaluate
import interventions as iv
from analyse import Node
from coursework import solutions as ref
from model import Config, Transformer, load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "checkpoints", "tiny", "add_d3_l2_h3_t1K_s0.pt")  # 3-digit adder, all 10^6 right
ADD_D6 = os.path.join(ROOT, "unverified", "add_d6_l2_h3_t5K_s1.pt")  # 6-digit adder (1 error in 10^6), exercise 10's model

# {exercise: (function name in exercises.py and solutions.py, what it is about)}: the table of README.md
EXERCISES = {
    1: ("ex1_read_answer", "tokens: encode a question, read the answer back"),
    2: ("ex2_attention", "attention by hand: scores, causal mask, pattern, z"),
    3: ("ex3_answer_nll", "the answer-only loss and the per-digit loss curve"),
    4: ("ex4_cascade_length", "why enrichment: how rare is a 4-level carry cascade?"),
    5: ("ex5_complexity", "complexity classes S0..S5, M0..M4+, N1..N4+"),
    6: ("ex6_ablate_head", "mean-ablate one head at one position"),
    7: ("ex7_pca", "PCA by hand; tri-state and bi-state heads"),
    8: ("ex8_patch", "an interchange intervention: a claim that holds and one that must fail"),
    9: ("ex9_grow", "reuse: grow an addition model and prove its function is preserved"),
    10: ("ex10_carry_node", "open-ended: find the node that computes the cascaded carry into A5"),
}
NOT_STARTED = "not implemented yet: fill in the stub in coursework/exercises.py (see coursework/README.md)"


def graded(check):
    """Turn an exception in the student's code into a failed check with a one-line message."""
    @functools.wraps(check)
    def run(fn, *args, **kw):
        try:
            return check(fn, *args, **kw)
        except NotImplementedError:
            return False, NOT_STARTED
        except Exception as e:  # most often the student's code: say what stopped the check, in one line
            return False, f"the check stopped on {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    return run


@functools.lru_cache(maxsize=None)
def model_at(path):
    """The model of a checkpoint, loaded once per process (the checkers only read it)."""
    return load_model(path)[0]


def shape_error(got, want, what):
    """A one-line message when `got` is not a tensor of `want`'s shape, else None."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        got = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        return f"{what}: expected a tensor of shape {tuple(want.shape)}, got {got}"


def questions(op, n, count, seed, enrichment=True):
    """(count, 3n+4) random `op` questions from data.random_batch, the same for the same seed."""
    return data.random_batch(op, n, count, torch.Generator().manual_seed(seed), enrichment=enrichment)


def first_wrong_question(got, want, tokens, n, show=lambda v: v.tolist()):
    """'12+34=+046: expected 46, got 64' for the first row where got != want, else None."""
    for i in (got != want).reshape(len(want), -1).any(1).nonzero()[:1, 0].tolist():
        return f"{data.decode(tokens[i])[:2 * n + 1]}: expected {show(want[i])}, got {show(got[i])}"


@graded
def check_1(fn):
    """Exercise 1, fn(tokens (B, 3n+4), n) -> (B,) signed answers: hand-made questions, then random add/sub."""
    for n, text in ((5, "12345+33333=+045678"), (6, "550030-800020=-0249990"), (5, "99999+00001=+100000"),
                    (3, "000-999=-0999"), (3, "000+000=+0000")):
        want = int(text.split("=")[1])  # Python reads the signed number: the oracle
        got = fn(data.encode(text)[None], n)
        if shape_error(got, torch.zeros(1), text):
            return False, shape_error(got, torch.zeros(1), text) + " (one signed answer per question)"
        if int(got[0]) != want:
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
    """Exercise 2, fn(attn, x (B, P, C)) -> (pattern (B, H, P, P), z (B, P, H, D)): against the hook points."""
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
    """Exercise 3, fn(logits (B, P, V), tokens (B, P), n) -> (B, n+2) NLL: against evaluate.answer_nll."""
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
    """Exercise 4, fn(tokens (B, P), n) -> (B,) cascade length (-1: no carry): hand-made, then random."""
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
    """Exercise 5, fn(tokens (B, P), n) -> (B,) index into data.COMPLEXITY: named sets, all 2-digit, random 5-digit."""
    for name, toks in data.named_sets("mix", 5).items():  # each hand-made set has its class in its name
        if name.endswith(("S0", "S1", "S2", "S3", "S4", "S5", "M0", "M1", "M2", "M3")):
            want = torch.full((len(toks),), data.COMPLEXITY.index(name.split(".")[1]))
            msg = first_wrong_question(fn(toks, 5), want, toks, 5, lambda c: data.COMPLEXITY[int(c)])
            if msg:
                return False, f"{name}: {msg}"
    everything = torch.cat([evaluate.all_questions(op, 2) for op in ("add", "sub")])
    for n, toks in ((2, everything), (5, torch.cat([questions(op, 5, 3000, 5) for op in ("add", "sub")]))):
        got, want = fn(toks, n), ref.ex5_complexity(toks, n)
        msg = shape_error(got, want, f"{n} digits") or first_wrong_question(
            got, want, toks, n, lambda c: data.COMPLEXITY[int(c)])
        if msg:
            return False, msg + " (negative answers are N classes; their cascades stop at the top non-zero digit)"
    return True, "every class right on all 20,000 2-digit questions, random 5-digit ones and the named sets"


@graded
def check_6(fn):
    """Exercise 6, fn(model, tokens, means, node) -> (B, n+2) bool wrong: every head Node at every position."""
    model = model_at(TINY)
    n, H = model.cfg.n_digits, model.cfg.n_heads
    toks = analyse.varied_questions("add", n, torch.Generator().manual_seed(6), size=128)
    means = analyse.layer_means(model, toks)
    labels = ["sign"] + [f"A{i}" for i in range(n, -1, -1)]
    seen = []
    for pos in range(data.logit_slice(n).start, data.logit_slice(n).stop):
        for layer in range(model.cfg.n_layers):
            for head in range(H):
                node = Node(pos, layer, head)
                args = (model, toks, means, node)
                got, want = fn(*args), ref.ex6_ablate_head(*args)
                msg = shape_error(got, want, node.name) or first_wrong_question(got, want, toks, n, lambda w: (
                    " ".join(a for a, x in zip(labels, w.tolist()) if x) or "nothing") + " wrong")
                if msg:
                    return False, (f"ablating {node.name}: {msg} (replace only {node.hook_name}[:, {pos}, {head}], "
                                   "by its mean, not zero)")
                seen.append((-int(want.any(1).sum()), f"{node.name} breaks " + " ".join(
                    f"{a} ({k})" for a, k in zip(labels, want.sum(0).tolist()) if k)))
    top = "; ".join(s for k, s in sorted(seen)[:3] if k)
    return True, f"same wrong answer tokens as the reference for every head; worst of {len(toks)} questions: {top}"


def align_signs(got, want):
    """Flip each component of `got` (columns of projections) to the sign that best matches `want`."""
    return got * torch.sign((got * want).sum(0, keepdim=True) + 1e-30)


@graded
def check_7(fn):
    """Exercise 7, fn(X (N, C), k) -> (projections (N, k), components (k, C), ratios (k,)), up to sign."""
    g = torch.Generator().manual_seed(7)
    X = torch.randn(300, 4, generator=g) * torch.tensor([6.0, 3.0, 1.5, 0.5]) @ torch.randn(4, 24, generator=g) + 5.0
    model = model_at(TINY)
    toks, labels = algorithm.tricase_questions("add", 3, 1, 100, g)  # column 1: sums 0-8 / 9 / 10-18
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=lambda s: s.endswith("hook_result"))
    heads = {f"P9.L{l}.H{h}": cache[f"blocks.{l}.attn.hook_result"][:, 9, h] for l in range(2) for h in range(3)}
    for what, A in [("off-centre random data", X)] + list(heads.items()):
        proj, comps, evr = fn(A, 3)
        want = ref.ex7_pca(A, 3)
        err = (shape_error(proj, want[0], f"{what}: projections") or shape_error(comps, want[1], f"{what}: components")
               or shape_error(evr, want[2], f"{what}: ratios"))
        if err:
            return False, err
        if not torch.allclose(align_signs(proj, want[0]), want[0], atol=1e-3 * want[0].abs().max()):
            return False, (f"{what}: projections differ (centre X first, then project it on the top k right "
                           "singular axes)")
        if not torch.allclose(align_signs(comps.T, want[1].T), want[1].T, atol=1e-3):
            return False, f"{what}: components differ (the rows of Vh from torch.linalg.svd of the centred X)"
        if not torch.allclose(evr, want[2], atol=1e-4):
            return False, f"{what}: ratios {evr.tolist()} vs {want[2].tolist()} (S^2 over the sum of all S^2)"
    _, _, V = torch.pca_lowrank(X, q=3, center=True, niter=6)  # an independent oracle for the axes
    if (fn(X, 3)[1] @ V).abs().diagonal().min() < 0.99:
        return False, "your components are not torch.pca_lowrank's axes"
    read = []  # tri-state: the 3 classes separate in the PC1-PC2 plane; bi-state: two merged vs the third
    for name, A in heads.items():  # your PCA equals the reference's (up to sign), so its labels are the same
        label, acc3, acc2, _, _ = algorithm.tricase_label(A, labels)
        read.append(f"{name} {acc3:.2f}/{acc2:.2f} {label}")
    return True, "column 1 tri-case, 3-class/2-class accuracy in PC1-PC2: " + ", ".join(read)


@graded
def check_8(fn):
    """Exercise 8, fn(model, store, alter, nodes) -> (B, n+2) predicted answer tokens after the patch."""
    model = model_at(TINY)
    n = model.cfg.n_digits
    store, alter, want = iv.claim_pairs(model, "SA", 1, 60, torch.Generator().manual_seed(8))
    last = iv.answer_position(1, n)  # the position that predicts A1
    every = [node for node in iv.all_nodes(model.cfg) if node.position == last]
    claims = [every, [Node(last, 1, None)], [Node(last, 0, 0), Node(last - 1, 0, 1)], [Node(last - 1, 1, None)],
              [Node(0, 0, 0)]]
    for nodes in claims:
        got, exp = fn(model, store, alter, nodes), ref.ex8_patch(model, store, alter, nodes)
        names = " + ".join(x.name for x in nodes)
        msg = shape_error(got, exp, names) or first_wrong_question(got, exp, alter, n, data.decode)
        if msg:
            return False, (f"patching {names}: {msg} (copy the store's hook_z[:, position, head] or "
                           "hook_post[:, position] into the alter run at the same position)")
    ok = [int((fn(model, store, alter, c) == want).all(1).sum()) for c in (every, [Node(0, 0, 0)])]
    if ok[0] != len(alter) or ok[1] != 0:
        return False, f"the claims gave {ok[0]} and {ok[1]} of {len(alter)} (expected all, then none)"
    return True, (f"'every node at P{last} carries A1's base add' passes {ok[0]}/{len(alter)} pairs; "
                  f"'P0.L0.H0 does' passes {ok[1]}/{len(alter)}, as it must (P0 sees only D2)")


@graded
def check_9(fn):
    """Exercise 9, fn(src, n_layers, n_heads) -> a grown model with src's answer logits (to 1e-4)."""
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


def inside(node, cfg):
    """Whether a Node names a head or MLP the model has (ints in range; head None for the MLP)."""
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in node[:2])
    head = node.head is None or isinstance(node.head, int) and 0 <= node.head < cfg.n_heads
    return ints and head and 0 <= node.position < cfg.n_ctx and 0 <= node.layer < cfg.n_layers


@graded
def check_10(fn, checkpoint=ADD_D6, n_pairs=100, min_share=0.9):
    """Exercise 10, fn(model) -> a Node, or a list of at most two, that passes the claim 'ST of A5' on
    >= min_share of n_pairs pairs (a plain (position, layer, head) tuple is read as a Node)."""
    model = model_at(checkpoint)
    got = fn(model)
    one = not isinstance(got, (tuple, list)) or isinstance(got, tuple) and got and not isinstance(got[0], tuple)
    nodes = [got] if one else list(got)
    nodes = [Node(*x) if isinstance(x, (tuple, list)) and len(x) == 3 else x for x in nodes]
    if not 1 <= len(nodes) <= 2 or not all(isinstance(x, Node) and inside(x, model.cfg) for x in nodes):
        return False, ("return one analyse.Node(position, layer, head), head None for the MLP, or a list of two, "
                       f"inside the model; got {got}")
    store, alter, want = iv.claim_pairs(model, "ST", 5, n_pairs, torch.Generator().manual_seed(10))
    passes, total = iv.test_claim(model, store, alter, want, nodes)
    names = " + ".join(x.name for x in nodes)
    verdict = (f"patching {names} from the store moves A5 as a cascaded carry predicts on {passes}/{total} pairs "
               f"({os.path.basename(checkpoint)})")
    if passes < min_share * total:
        return False, (verdict + f": below {100 * min_share:.0f}% (which position predicts A5? which layer sees "
                                  "the carry?)")
    return True, verdict


CHECKS = {i: globals()[f"check_{i}"] for i in EXERCISES}
