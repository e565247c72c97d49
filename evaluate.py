"""
Check a model on questions: score them by teacher forcing, verify it on fresh and named questions, and
print the result as a table. Used by train.py after training, and by the analysis and reuse scripts.

    python train.py --verify 1000000 --checkpoint checkpoints/add_d5_l2_h3_t6K_s1.pt   # the command line

The loss is the papers' (the Math notebooks): the mean NLL over the answer tokens only, in float64.
"""
import torch
from tqdm import tqdm

import data


def answer_nll(logits, tokens, n_digits):
    """Per-question, per-answer-token NLL (B, n+2) in float64. `logits` holds all positions (B, P, V)
    or only the n+2 answer-predicting ones (B, n+2, V)."""
    if logits.shape[1] != n_digits + 2:
        logits = logits[:, data.logit_slice(n_digits)]
    logp = logits.double().log_softmax(-1)  # float64, as the papers do: losses go down to 1e-9
    return -logp.gather(-1, tokens[:, data.answer_slice(n_digits), None])[..., 0]


@torch.inference_mode()
def score(model, tokens, n_digits, batch_size=1024, with_loss=True):
    """Run questions (B, P) in large batches. Returns (correct (B,) bool: every answer token right,
    loss (B,) float: mean answer NLL, or None without `with_loss`, predicted answer tokens (B, n+2)).
    One teacher-forced pass decides correctness exactly: greedy decoding gets a question right only if
    every answer token is the argmax given the right tokens before it, which is what is checked here."""
    device = next(model.parameters()).device
    read = data.logit_slice(n_digits)
    correct, loss, pred = [], [], []
    for chunk in tokens.split(batch_size):
        chunk = chunk.to(device)
        logits = model(chunk, read)  # only the n+2 logits that are read: (b, n+2, V)
        p = logits.argmax(-1)
        correct.append((p == chunk[:, data.answer_slice(n_digits)]).all(1).cpu())
        if with_loss:
            loss.append(answer_nll(logits, chunk, n_digits).mean(1).float().cpu())
        pred.append(p.cpu())
    return torch.cat(correct), torch.cat(loss) if with_loss else None, torch.cat(pred)


def ops_of(task):
    return ["add", "sub"] if task == "mix" else [task]


def all_questions(op, n_digits):
    """Every question of an operation: 10^(2n) of them (a million for n = 3)."""
    v = torch.arange(10 ** n_digits)
    a, b = v.repeat_interleave(len(v)), v.repeat(len(v))
    return data.make_questions(a, b, op, n_digits)


def fresh_batches(op, n_digits, n_questions, gen, chunk, enrichment=False):
    """Yield n_questions fresh questions (b, 3n+4) of one operation from generator `gen`, `chunk` at a
    time (never all in memory): uniform digits (the natural distribution), or with `enrichment` the
    papers' training enrichment (data.enrich: long carry and borrow cascades made common)."""
    for i in range(0, n_questions, chunk):
        yield data.random_batch(op, n_digits, min(chunk, n_questions - i), gen, enrichment=enrichment)


def question_sets(task, n_digits, n_questions, gen, n_enriched=None, sparse_sample=None, chunk=65536):
    """The sets `verify` checks, as {name: iterable of token batches (b, 3n+4)}, in this order:
    - `<op> uniform`: n_questions fresh questions per operation, every digit uniform (the natural
      distribution: no enrichment, no short operands); `<op> all` instead when n_questions is 'all';
    - `<op> enriched`: n_enriched (default n_questions; 0 = none) fresh questions per operation drawn as
      the papers train (data.enrich: in 60% of batches, 40% of the columns sum to 9 or have equal digits);
    - the named sets of data.named_sets (hand-made and rule-generated edge cases);
    - `Add.sparse` / `Sub.sparse` from data.sparse_sets (operands non-zero in at most two columns; every
      one of them, or all one-column ones plus `sparse_sample` two-column ones drawn from `gen`).
    Fresh questions come from `gen`, in the order listed (so a seeded `gen` gives the same sets)."""
    sets = {}
    n_enriched = n_questions if n_enriched is None else n_enriched
    for op in ops_of(task):
        if n_questions == "all":
            sets[f"{op} all"] = [all_questions(op, n_digits)]
        else:
            sets[f"{op} uniform"] = fresh_batches(op, n_digits, n_questions, gen, chunk)
    for op in ops_of(task):
        if n_questions != "all" and n_enriched:
            sets[f"{op} enriched"] = fresh_batches(op, n_digits, n_enriched, gen, chunk, enrichment=True)
    sets.update({k: [v] for k, v in data.named_sets(task, n_digits).items()})
    sets.update({k: [v] for k, v in data.sparse_sets(task, n_digits, sparse_sample, gen).items()})
    return sets


FRESH = ("uniform", "enriched", "all")  # the endings of the fresh sets' names; the rest are named sets


def verify(model, task, n_digits, n_questions, seed=0, progress=True, chunk=65536, n_enriched=None,
           sparse_sample=None, gen=None):
    """Check a model on the sets of `question_sets`: fresh uniform questions (the natural distribution,
    as the papers' 10^6-question check), fresh enriched ones (the training distribution), every named
    set and the sparse sets. Fresh questions come from `gen`, or else from a generator seeded apart from
    training's (seed + 1_000_003). n_questions: per operation, or 'all' (every question, n <= 3).
    Returns {set name: {"questions", "correct", "by_class": {class: [questions, correct]},
    "failures": the first 10 as 'a+b = got (expected)'}}."""
    gen = gen or torch.Generator().manual_seed(seed + 1_000_003)
    sets = question_sets(task, n_digits, n_questions, gen, n_enriched, sparse_sample, chunk)
    n_enriched = n_questions if n_enriched is None else n_enriched
    per_op = 10 ** (2 * n_digits) if n_questions == "all" else n_questions + n_enriched
    bar = tqdm(total=per_op * len(ops_of(task)), desc="verify", disable=not progress, mininterval=0.5)
    results = {}
    for name, batches in sets.items():
        r = {"questions": 0, "correct": 0, "by_class": {}, "failures": []}
        for tokens in batches:
            ok, _, pred = score(model, tokens, n_digits, with_loss=False)  # the loss is not reported
            cls = data.complexity(tokens, n_digits)
            for c in cls.unique().tolist():
                m = cls == c
                q, k = r["by_class"].get(data.COMPLEXITY[c], [0, 0])
                r["by_class"][data.COMPLEXITY[c]] = [q + int(m.sum()), k + int(ok[m].sum())]
            r["questions"] += len(tokens)
            r["correct"] += int(ok.sum())
            for i in (~ok).nonzero()[:10 - len(r["failures"])].flatten().tolist():
                q = data.decode(tokens[i])
                r["failures"].append(f"{q[:2 * n_digits + 1]} = {data.decode(pred[i])} (expected {q[2 * n_digits + 2:]})")
            if name.endswith(FRESH):
                bar.update(len(tokens))
        results[name] = r
    bar.close()
    return results


def errors(results) -> dict:
    """{set name: wrong answers} from verify's results."""
    return {name: r["questions"] - r["correct"] for name, r in results.items()}


def report(results) -> str:
    """The verification results as a text table: the fresh questions by complexity class, each named set
    in one line, then the first failures as `a+b = got (expected)`."""
    lines = ["uniform: every digit uniform (the natural distribution, as the papers' 10^6 check); enriched: "
             "the training distribution (long carry/borrow cascades made common); the rest: named sets",
             f"{'set':<12} {'class':<6} {'questions':>10} {'correct':>10} {'%':>9} {'errors':>7}"]

    def row(name, c, q, k):
        lines.append(f"{name:<12} {c:<6} {q:>10,} {k:>10,} {100 * k / q:>8.4f}% {q - k:>7,}")
    for name, r in results.items():
        if name.endswith(FRESH):
            for c, (q, k) in sorted(r["by_class"].items(), key=lambda kv: data.COMPLEXITY.index(kv[0])):
                row(name, c, q, k)
        row(name, "all", r["questions"], r["correct"])
    fails = [f for r in results.values() for f in r["failures"]]
    return "\n".join(lines + (["first failures:"] + ["  " + f for f in fails[:10]] if fails else ["no failures"]))
