"""
The mathematical framework: how n-digit addition and subtraction decompose into per-column sub-tasks,
written as plain functions, checked against integer arithmetic, and used to build the store/alter
question pairs (with their predicted answers) that the interchange interventions of algorithm.py test.

    python framework.py --task mix --digits 5          # check the framework on 1,000,000 questions per op

Sub-tasks of column t (digits D_t, D'_t; SPEC 4.1, 4.12):
    addition              SA base add (D+D') % 10 | SC make carry D+D' >= 10 | SS sum is 9 | ST TriCase 8/9/10
    subtraction, D >= D'  MD difference (D-D') % 10 | MB borrow D < D' | MZ D == D' | MT TriCase 10/9/8
    subtraction, D <  D'  ND, NB, NZ, NT: the same on (D', D), since the answer is -(D' - D)
A carry (borrow) cascades: TriAdd(state of column t, state of the columns below) is 10 exactly when
column t passes a carry on. Answer digit A_t = (SA_t + carry into t) % 10, or (MD_t - borrow into t) % 10;
A_n is the carry out of the top column; the answer is negative exactly when a borrow leaves the top column.

The sub-task functions use only operators, so they take Python ints or integer tensors alike.
Left out on purpose: multiplication (no model here learns it).
"""
import argparse
import time

import torch
from tqdm import tqdm

import data

# ----------------------------------------------------------------------------- sub-tasks of one column


def base_add(d, d2):            # SA
    return (d + d2) % 10


def make_carry(d, d2):          # SC
    return (d + d2) >= 10


def make_sum9(d, d2):           # SS
    return (d + d2) == 9


def tri_case(d, d2):            # ST: 10 makes a carry, 9 passes one on, 8 absorbs it
    return 8 + ((d + d2) >= 9) + ((d + d2) >= 10)


def tri_add(cx, cy):
    """State of a column (cx) joined with the resolved state of the columns below it (cy). Only
    `== 10` (a carry leaves the group) matters downstream; 9 marks an upper column the carry made 9."""
    carry = (cx == 10) | ((cx == 9) & (cy == 10))
    return 8 + 2 * carry + ((cx == 8) & (cy == 10))


def difference(d, d2):          # MD (ND on swapped digits)
    return (d - d2) % 10


def make_borrow(d, d2):         # MB (NB)
    return d < d2


def make_zero(d, d2):           # MZ (NZ)
    return d == d2


def tri_case_sub(d, d2):        # MT (NT): 10 makes a borrow, 9 passes one on, 8 absorbs it
    return 8 + (d <= d2) + (d < d2)

# ----------------------------------------------------------------------------- whole answers


def column_digits(values: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) non-negative ints -> (B, n) digits, units first, so column t is [:, t]."""
    return data.digits_of(values, n).flip(1)


def _cascade(states):
    """Per-column TriCase states, units first (list of n) -> carry (borrow) into each column 0..n (list)."""
    carry, resolved = [states[0] != states[0]], None  # nothing enters column 0
    for s in states:
        resolved = s if resolved is None else tri_add(s, resolved)
        carry.append(resolved == 10)
    return carry


def add_subtasks(x, y):
    """x, y: (B, n) digits units first. Returns a dict of (B, n) tensors SA SC SS ST, 'carry' (B, n+1)
    (carry into column t; [:, n] is the carry out of the top) and 'digits' (B, n+1) answer units first."""
    n = x.shape[1]
    st = [tri_case(x[:, t], y[:, t]) for t in range(n)]
    carry = torch.stack(_cascade(st), 1).long()                          # (B, n+1)
    sa = base_add(x, y)
    digits = torch.cat([(sa + carry[:, :n]) % 10, carry[:, n:]], 1)     # (B, n+1)
    return {"SA": sa, "SC": make_carry(x, y), "SS": make_sum9(x, y), "ST": torch.stack(st, 1),
            "carry": carry, "digits": digits}


def sub_subtasks(x, y, prefix="M"):
    """The subtraction sub-tasks of x - y (prefix M) or, with x and y swapped by the caller, of y - x
    (prefix N). 'borrow' (B, n+1) is the borrow into each column; [:, n] set means x < y."""
    n = x.shape[1]
    st = [tri_case_sub(x[:, t], y[:, t]) for t in range(n)]
    borrow = torch.stack(_cascade(st), 1).long()                         # (B, n+1)
    md = difference(x, y)
    digits = torch.cat([(md - borrow[:, :n]) % 10, torch.zeros_like(borrow[:, n:])], 1)
    return {prefix + "D": md, prefix + "B": make_borrow(x, y), prefix + "Z": make_zero(x, y),
            prefix + "T": torch.stack(st, 1), "borrow": borrow, "digits": digits}


def framework_answer(a: torch.Tensor, b: torch.Tensor, op: str, n: int):
    """Answer of a op b computed only through the sub-tasks: (negative (B,) bool, digits (B, n+1) units first)."""
    x, y = column_digits(a, n), column_digits(b, n)
    if op == "add":
        return torch.zeros(len(a), dtype=torch.bool), add_subtasks(x, y)["digits"]
    m, neg = sub_subtasks(x, y, "M"), sub_subtasks(y, x, "N")
    negative = m["borrow"][:, n].bool()  # the sign: a borrow leaves the top column
    return negative, torch.where(negative[:, None], neg["digits"], m["digits"])


def answer_tokens(negative, digits):
    """(B,) bool and (B, n+1) units-first digits -> (B, n+2) answer tokens `sign A(n)..A0`."""
    sign = torch.where(negative, data.MINUS, data.PLUS)[:, None]
    return torch.cat([sign, digits.flip(1)], 1)


def check_framework(op: str, n: int, n_questions=1_000_000, seed=0, batch=100_000, progress=True):
    """Framework vs the true answers of `n_questions` training-distribution questions (with enrichment).
    Returns (errors, questions checked, seconds)."""
    gen, errors, done, t0 = torch.Generator().manual_seed(seed), 0, 0, time.time()
    with tqdm(total=n_questions, desc=f"framework {op} d{n}", disable=not progress, mininterval=0.5) as bar:
        while done < n_questions:
            tokens = data.random_batch(op, n, min(batch, n_questions - done), gen)
            a, b, _, _ = data.parse_questions(tokens, n)
            pred = answer_tokens(*framework_answer(a, b, op, n))
            errors += int((pred != tokens[:, data.answer_slice(n)]).any(1).sum())
            done += len(tokens)
            bar.update(len(tokens))
    return errors, done, time.time() - t0


def run_framework(task: str, n_digits: int, progress=True, n_questions=1_000_000, seed=0) -> str:
    """Check the framework on n_questions per operation; markdown with the result and the timing."""
    ops = ["add", "sub"] if task == "mix" else [task]
    lines = ["## The mathematical framework", "",
             "Each answer digit is computed from per-column sub-tasks only (framework.py): "
             "A_t = (SA_t + carry into t) % 10 for addition, (MD_t - borrow into t) % 10 for D >= D' and "
             "(ND_t - borrow into t) % 10 for D < D', with carries and borrows cascaded by TriAdd over the "
             "TriCase states ST / MT / NT; the sign is the borrow out of the top column.", "",
             "| operation | questions | errors | seconds |", "|---|---|---|---|"]
    for op in ops:
        errors, done, secs = check_framework(op, n_digits, n_questions, seed, progress=progress)
        lines.append(f"| {op} d{n_digits} | {done:,} | {errors} | {secs:.1f} |")
    return "\n".join(lines) + "\n"

# ----------------------------------------------------------------------------- store/alter pairs


ADD_TASKS, SUB_TASKS = ["SA", "SC", "ST"], ["D", "B", "T"]  # sub tasks take an M or N prefix


def answer_label(k: int, n: int) -> str:
    """Answer digit k (0..n) is 'A<k>'; the sign is 'A<n+1>', as in the Impact tags (SPEC 4.5)."""
    return f"A{k}"


def _draw(B, n, op, gen, p_special=0.3):
    """Random digits (B, n) units first, with p_special of the cells made sum-9 (add) or equal (sub),
    the cascade triggers the pairs need."""
    x, y = torch.randint(0, 10, (B, n), generator=gen), torch.randint(0, 10, (B, n), generator=gen)
    special = torch.rand(B, n, generator=gen) < p_special
    return x, torch.where(special, 9 - x if op == "add" else x, y)


def _pair_rule(task, k, n, xa, ya, xs, ys):
    """For sub-task `task` of answer digit k: (keep (B,) bool, expected digit (B,)). `keep` says the pair
    tests the claim: the store differs from the alter only in that sub-task's value, and the claim
    predicts a change. The expected digit combines the store's sub-task value with the alter's rest."""
    if task in ADD_TASKS:
        a, s = add_subtasks(xa, ya), add_subtasks(xs, ys)
        not9 = ~a["SS"][:, k] if k < n else torch.ones(len(xa), dtype=torch.bool)  # no onward cascade
        sa_k = a["SA"][:, k] if k < n else 0
        if task == "SA":
            keep, exp = a["ST"][:, k] == s["ST"][:, k], (s["SA"][:, k] + a["carry"][:, k]) % 10
        elif task == "SC":
            keep = (a["SA"][:, k - 1] == s["SA"][:, k - 1]) & (a["SC"][:, k - 1] != s["SC"][:, k - 1]) & not9
            exp = (sa_k + s["SC"][:, k - 1].long()) % 10
        else:  # ST: the carry cascaded through a sum-9 column k-1 from the columns below it
            keep = a["SS"][:, k - 1] & (a["carry"][:, k - 1] != s["carry"][:, k - 1]) & not9
            exp = (sa_k + s["carry"][:, k]) % 10
        return keep, exp
    p = task[0]
    (xa, ya, xs, ys) = (xa, ya, xs, ys) if p == "M" else (ya, xa, ys, xs)  # N: digits of D' - D
    a, s = sub_subtasks(xa, ya, p), sub_subtasks(xs, ys, p)
    right_sign = (a["borrow"][:, n] == 0) & (s["borrow"][:, n] == 0)  # M: D >= D', N: D' > D
    if p == "N":
        right_sign &= (xa != ya).any(1) & (xs != ys).any(1)  # 0 is not negative
    not0 = ~a[p + "Z"][:, k]
    if task[1] == "D":
        keep, exp = a[p + "T"][:, k] == s[p + "T"][:, k], (s[p + "D"][:, k] - a["borrow"][:, k]) % 10
    elif task[1] == "B":
        keep = (a[p + "D"][:, k - 1] == s[p + "D"][:, k - 1]) & (a[p + "B"][:, k - 1] != s[p + "B"][:, k - 1]) & not0
        exp = (a[p + "D"][:, k] - s[p + "B"][:, k - 1].long()) % 10
    else:  # T: the borrow cascaded through an equal column k-1
        keep = a[p + "Z"][:, k - 1] & (a["borrow"][:, k - 1] != s["borrow"][:, k - 1]) & not0
        exp = (a[p + "D"][:, k] - s["borrow"][:, k]) % 10
    return keep & right_sign, exp


def subtask_digits(task: str, n: int):
    """The answer digits k a sub-task can be tested on (the sign, 'SGN', is digit n+1)."""
    if task == "SGN":
        return [n + 1]
    first = {"SA": 0, "SC": 1, "ST": 2, "D": 0, "B": 1, "T": 2}[task if task in ADD_TASKS else task[1]]
    # a subtraction answer's A_n is always 0, and a borrow out of the top column would flip the sign
    last = n if task in ("SC", "ST") else n - 1
    return list(range(first, last + 1))


def make_pairs(task: str, k: int, n: int, count: int, gen: torch.Generator, tries=40):
    """`count` store/alter question pairs for the claim "a node carries sub-task `task` of answer digit k".
    Returns (store tokens, alter tokens, expected answer tokens), each (count', ...), count' <= count
    (fewer only when such pairs are rare). The expected answer is the alter's with digit k replaced
    by the framework's prediction; for 'SGN' (answer sign) only the sign flips."""
    op = "add" if task in ADD_TASKS else "sub"
    stores, alters, expects, have = [], [], [], 0
    for _ in range(tries):
        if have >= count:
            break
        xa, ya = _draw(16 * count, n, op, gen)
        xs, ys = xa.clone(), ya.clone()
        if task == "SGN":  # swap the digits of the highest column where they differ: the sign flips
            top = ((xa != ya) * torch.arange(1, n + 1)).argmax(1)           # (B,)
            rows = torch.arange(len(xa))
            xs[rows, top], ys[rows, top] = ya[rows, top], xa[rows, top]
            keep, exp = (xa != ya).any(1), None
        else:
            step = task if task in ADD_TASKS else task[1]
            cols = {"SA": [k], "D": [k], "SC": [k - 1], "B": [k - 1]}.get(step, list(range(k - 1)))
            xr, yr = _draw(len(xa), n, op, gen)
            xs[:, cols], ys[:, cols] = xr[:, cols], yr[:, cols]
            keep, exp = _pair_rule(task, k, n, xa, ya, xs, ys)
        val = lambda d: data.value_of(d.flip(1))  # noqa: E731  units-first digits -> ints
        store = data.make_questions(val(xs), val(ys), op, n)
        alter = data.make_questions(val(xa), val(ya), op, n)
        want = alter[:, data.answer_slice(n)].clone()                       # (B, n+2) sign A(n)..A0
        if task == "SGN":
            want[:, 0] = store[:, data.answer_slice(n)][:, 0]
        else:
            want[:, n + 1 - k] = exp
        keep &= (want != alter[:, data.answer_slice(n)]).any(1)            # the claim predicts a change
        stores.append(store[keep]), alters.append(alter[keep]), expects.append(want[keep])
        have += int(keep.sum())
    return torch.cat(stores)[:count], torch.cat(alters)[:count], torch.cat(expects)[:count]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Check the sub-task framework against integer arithmetic.")
    p.add_argument("--task", default="add", choices=["add", "sub", "mix"], help="operation(s) to check")
    p.add_argument("--digits", type=int, default=5, help=f"digits per operand, 1 to {data.MAX_DIGITS}")
    p.add_argument("--questions", type=int, default=1_000_000, help="questions per operation")
    p.add_argument("--seed", type=int, default=0, help="seed of the question generator")
    args = p.parse_args()
    if not 1 <= args.digits <= data.MAX_DIGITS or args.questions < 1:
        p.error(f"--digits must be 1 to {data.MAX_DIGITS} and --questions positive")
    print(run_framework(args.task, args.digits, n_questions=args.questions, seed=args.seed))
