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


def fresh_batches(op, n_digits, n_questions, gen, chunk, enrichment=False, stress=False):
    """Yield n_questions fresh questions (b, 3n+4) of one operation from generator `gen`, `chunk` at a
    time (never all in memory), drawn only as they are asked for: uniform digits (the natural
    distribution), with `enrichment` the papers' training enrichment (data.enrich: long carry and borrow
    cascades made common), or with `stress` the operand pairs of data.stress_pairs."""
    for i in range(0, n_questions, chunk):
        k = min(chunk, n_questions - i)
        if stress:
            pairs = data.stress_pairs(n_digits, k, gen)  # (k, 2)
            yield data.make_questions(pairs[:, 0], pairs[:, 1], op, n_digits)
        else:
            yield data.random_batch(op, n_digits, k, gen, enrichment=enrichment)


def question_sets(task, n_digits, n_questions, gen, n_enriched=None, sparse_sample=None, chunk=65536,
                  n_stress=None):
    """The sets `verify` checks, as {name: iterable of token batches (b, 3n+4)}, in this order:
    - `<op> uniform`: n_questions fresh questions per operation, every digit uniform (the natural
      distribution: no enrichment, no short operands); `<op> all` instead when n_questions is 'all';
    - `<op> enriched`: n_enriched (default n_questions; 0 = none) fresh questions per operation drawn as
      the papers train (data.enrich: in 60% of batches, 40% of the columns sum to 9 or have equal digits);
    - the named sets of data.named_sets (hand-made and rule-generated edge cases);
    - `Add.sparse` / `Sub.sparse` from data.sparse_sets (operands non-zero in at most two columns; every
      one of them, or all one-column ones plus `sparse_sample` two-column ones drawn from `gen`);
    - `Add.stress` / `Sub.stress`: n_stress (default n_questions // 10; none for 'all') fresh questions
      per operation from data.stress_pairs (small digit alphabets, an operand 0, 1 or 10^n-1, near-equal
      operands, sums near 10^k, random lengths, columns summing to 9 or equal).
    Fresh questions come from `gen`, in the order listed (so a seeded `gen` gives the same sets, and the
    stress questions, drawn last, leave the others as they were before they existed)."""
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
    n_stress = (0 if n_questions == "all" else n_questions // 10) if n_stress is None else n_stress
    for op in ops_of(task):
        if n_stress:
            sets[op.capitalize() + ".stress"] = fresh_batches(op, n_digits, n_stress, gen, chunk, stress=True)
    return sets


FRESH = ("uniform", "enriched", "all")  # the endings of the fresh sets' names; the rest are named sets


def verify(model, task, n_digits, n_questions, seed=0, progress=True, chunk=65536, n_enriched=None,
           sparse_sample=None, gen=None, n_stress=None):
    """Check a model on the sets of `question_sets`: fresh uniform questions (the natural distribution),
    fresh enriched ones (the training distribution, from which the papers' 10^6-question check drew),
    every named set, the sparse sets and the stress sets. "Verified" here means zero errors on all of them.
    Fresh questions come from `gen`, or else from a generator seeded apart from training's (seed + 1_000_003).
    n_questions: per operation, or 'all' (every question, n <= 3); n_enriched: default n_questions;
    n_stress: default n_questions // 10 (0 for 'all', where every question is checked anyway).
    Returns {set name: {"questions", "correct", "by_class": {class: [questions, correct]},
    "failures": the first 10 as 'a+b = got (expected)'}}."""
    gen = gen or torch.Generator().manual_seed(seed + 1_000_003)
    sets = question_sets(task, n_digits, n_questions, gen, n_enriched, sparse_sample, chunk, n_stress)
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
                got, want = data.decode(pred[i]), q[2 * n_digits + 2:]
                r["failures"].append(f"{q[:2 * n_digits + 1]} = {got} (expected {want})")
            if name.endswith(FRESH):
                bar.update(len(tokens))
        results[name] = r
    bar.close()
    return results


def check(model, task, n_digits, n_questions, gen) -> dict:
    """A quick check during training: errors {set name: wrong answers} on n_questions fresh uniform and
    as many enriched questions per operation, every named set, and the one-column sparse questions plus
    n_questions two-column ones, all drawn from `gen` (keep it apart from the training data's). No stress
    sets: the checks draw what they drew before those existed, so recorded runs repeat their checks."""
    was_training = model.training
    model.eval()
    found = errors(verify(model, task, n_digits, n_questions, progress=False, gen=gen, sparse_sample=n_questions,
                          n_stress=0))
    model.train(was_training)
    return found


def errors(results) -> dict:
    """{set name: wrong answers} from verify's results."""
    return {name: r["questions"] - r["correct"] for name, r in results.items()}


def report(results) -> str:
    """The verification results as a text table: the fresh questions by complexity class, each named set
    in one line, then the verdict: "verified" (no error anywhere) or the first failures as `a+b = got (expected)`."""
    lines = ["uniform: every digit uniform (the natural distribution); enriched: the training distribution (long "
             "carry/borrow cascades made common; the papers' 10^6 check drew from it); the rest: named, sparse and "
             "stress sets",
             f"{'set':<12} {'class':<6} {'questions':>10} {'correct':>10} {'%':>9} {'errors':>7}"]

    def row(name, c, q, k):
        lines.append(f"{name:<12} {c:<6} {q:>10,} {k:>10,} {100 * k / q:>8.4f}% {q - k:>7,}")
    for name, r in results.items():
        if name.endswith(FRESH):
            for c, (q, k) in sorted(r["by_class"].items(), key=lambda kv: data.COMPLEXITY.index(kv[0])):
                row(name, c, q, k)
        row(name, "all", r["questions"], r["correct"])
    fails = [f for r in results.values() for f in r["failures"]]
    n = sum(r["questions"] for r in results.values())
    verdict = (["NOT verified: first failures:"] + ["  " + f for f in fails[:10]] if fails
               else [f"verified: 0 errors in all {n:,} questions above"])
    return "\n".join(lines + verdict)

# ----------------------------------------------------------------------------- asking: answers generated token by token

SYMBOLS = {"+": "add", "-": "sub"}  # the operators a question may use; data.OPS gives their tokens
UNKNOWN_OPERATORS = "*/x×÷\\"        # read as an operator (then refused) rather than as a bad digit


def parse_question(question: str, task: str, n_digits: int):
    """'12345+67890' (spaces and a final '=' allowed, operands of up to n_digits digits) -> (a, op, b)
    with op 'add' or 'sub'. Raises ValueError, in one line naming the question, for a missing or unknown
    operator, an operator the task does not answer, or an operand that is not a number from 0 to 10^n - 1."""
    q = "".join(question.split()).removesuffix("=")
    ops = ops_of(task)
    model = f"{'an' if task == 'add' else 'a'} {task} model, which answers " + \
        " or ".join(f"a{s}b" for s, op in SYMBOLS.items() if op in ops)
    at = next((i for i, c in enumerate(q) if i > 0 and (c in SYMBOLS or c in UNKNOWN_OPERATORS)), None)
    if at is None:
        raise ValueError(f"{question!r}: no operator ({model})")
    sym, a, b = q[at], q[:at], q[at + 1:]
    if SYMBOLS.get(sym) not in ops:
        raise ValueError(f"{question!r}: the operator {sym!r} is not for {model}")
    for s in (a, b):
        if not s:
            raise ValueError(f"{question!r}: an operand is missing ({model})")
        if not (s.isascii() and s.isdigit()):
            raise ValueError(f"{question!r}: {s!r} is not a number (operands are 0 to {10 ** n_digits - 1})")
        if len(s.lstrip("0")) > n_digits:
            raise ValueError(f"{question!r}: {s} has {len(s.lstrip('0'))} digits; this is a {n_digits}-digit model")
    return int(a), SYMBOLS[sym], int(b)


@torch.inference_mode()
def ask(model, questions, task, batch_size=1024):
    """Answer question strings by greedy generation (`Transformer.generate`) from the prompt `a op b =`,
    with no teacher forcing. Returns (answers, probs): each answer as the model writes it, sign and n+1
    digits ('+080235'; `int()` reads it), and probs (B, n+2) float64, the probability of each answer
    token it chose. ValueError for the first bad question (`parse_question`)."""
    n = model.cfg.n_digits
    parsed = [parse_question(q, task, n) for q in questions]
    prompts = [data.encode(f"{a:0{n}d}{'+' if op == 'add' else '-'}{b:0{n}d}=") for a, op, b in parsed]
    if not prompts:
        return [], torch.zeros(0, n + 2, dtype=torch.float64)
    device = next(model.parameters()).device
    answers, probs = [], []
    for chunk in torch.stack(prompts).split(batch_size):  # (b, 2n+2) each
        tokens, p = model.generate(chunk.to(device), n + 2, return_probs=True)  # (b, 3n+4), (b, n+2)
        answers += data.decode(tokens[:, data.answer_slice(n)].cpu())
        probs.append(p.cpu())
    return answers, torch.cat(probs)


def ask_lines(model, task, questions):
    """The `--ask` report: each question answered by `ask`, as a line with the verdict of Python's integers
    (every answer token must match, sign included, as in `verify`), the complexity class and the least
    confident answer token (sign, A(n)..A0) with its probability. Returns ([(line, bad), ...], status):
    `bad` marks the one-line message of a bad question; status 0 all right, 1 one wrong, 2 one bad."""
    n = model.cfg.n_digits
    parsed = {}
    for q in questions:
        try:
            parsed[q] = parse_question(q, task, n)
        except ValueError as e:
            parsed[q] = str(e)
    good = [q for q in questions if isinstance(parsed[q], tuple)]
    found = dict(zip(good, zip(*ask(model, good, task))))  # question -> (answer, probs (n+2,))
    names = ["sign"] + [f"A{i}" for i in range(n, -1, -1)]
    lines, status = [], 0
    for q in questions:
        if not isinstance(parsed[q], tuple):
            lines.append((parsed[q], True))
            status = 2
            continue
        (a, op, b), (answer, prob) = parsed[q], found[q]
        tokens = data.make_questions([a], [b], op, n)  # (1, 3n+4) with the true answer
        want = data.decode(tokens[0, data.answer_slice(n)])  # '+080235'
        cls = data.COMPLEXITY[data.complexity(tokens, n)[0]]
        k = int(prob.argmin())
        sure = f"1 - {1 - prob[k]:.1e}" if prob[k] > 0.999 else f"{prob[k]:.4f}"  # float64: 1 - p is exact enough
        verdict = "right" if answer == want else f"WRONG, expected {readable(want)}"
        lines.append((f"{a}{'+' if op == 'add' else '-'}{b} = {readable(answer)}  {verdict}  {cls}  "
                      f"least sure: {names[k]} = {answer[k]} (p = {sure})", False))
        status = status or int(answer != want)
    return lines, status


def readable(answer: str) -> str:
    """An answer as the model writes it, '+080235', shown as a number, '80235'; '-0' and odd token strings
    ('+0=8023') are shown as they are, since the check compares every token."""
    sign, digits = answer[0], answer[1:].lstrip("0") or "0"
    return answer if sign not in "+-" or not digits.isdigit() else ("-" if sign == "-" else "") + digits
