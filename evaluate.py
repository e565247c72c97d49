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


def fresh_batches(op, n_digits, n_questions, seed, chunk):
    """Yield n_questions fresh questions of one operation, `chunk` at a time (never all in memory)."""
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, n_questions, chunk):
        yield data.random_batch(op, n_digits, min(chunk, n_questions - i), gen)


def verify(model, task, n_digits, n_questions, seed=0, progress=True, chunk=65536):
    """Check `n_questions` fresh questions per operation ('all' = every possible question, n <= 3) and
    every named set. The generator is seeded apart from training's (seed + 1_000_003). Returns a dict
    {set name: {"questions", "correct", "by_class": {class: [questions, correct]}, "failures": [...]}}."""
    results = {}
    sets = {}
    for op in ops_of(task):
        if n_questions == "all":
            sets[f"{op} all"] = [all_questions(op, n_digits)]
        else:
            sets[f"{op} random"] = fresh_batches(op, n_digits, n_questions, seed + 1_000_003, chunk)
    sets.update({k: [v] for k, v in data.named_sets(task, n_digits).items()})
    total = sum(n_questions if isinstance(n_questions, int) else 10 ** (2 * n_digits) for _ in ops_of(task))
    bar = tqdm(total=total, desc="verify", disable=not progress, mininterval=0.5)
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
            if name.endswith(("random", "all")):
                bar.update(len(tokens))
        results[name] = r
    bar.close()
    return results


def report(results) -> str:
    """The verification results as a text table: the fresh questions by complexity class, each named set
    in one line, then the first failures as `a+b = got (expected)`."""
    lines = [f"{'set':<12} {'class':<6} {'questions':>10} {'correct':>10} {'%':>9} {'errors':>7}"]

    def row(name, c, q, k):
        lines.append(f"{name:<12} {c:<6} {q:>10,} {k:>10,} {100 * k / q:>8.4f}% {q - k:>7,}")
    for name, r in results.items():
        if name.endswith(("random", "all")):
            for c, (q, k) in sorted(r["by_class"].items(), key=lambda kv: data.COMPLEXITY.index(kv[0])):
                row(name, c, q, k)
        row(name, "all", r["questions"], r["correct"])
    fails = [f for r in results.values() for f in r["failures"]]
    return "\n".join(lines + (["first failures:"] + ["  " + f for f in fails[:10]] if fails else ["no failures"]))

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
