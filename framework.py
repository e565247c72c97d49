"""
The mathematical framework: how n-digit addition and subtraction decompose into per-column sub-tasks,
written as plain functions, checked against integer arithmetic, and used to build the store/alter
question pairs (with their predicted answers) that the interchange interventions of interventions.py test.

    python framework.py --task mix --digits 5          # check the framework on 1,000,000 questions per op

Sub-tasks of column t (digits D_t, D'_t; "Understanding Addition in Transformers", section 4, and its successor's names):
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

# The sub-tasks an interchange intervention tests, for answer digit A_k (k = 0 units .. n; the sign is k = n+1):
#   addition SA: column k's base add | SC: the carry column k-1 makes | SS: column k-1 sums to 9, passing a
#   carry from below on | ST: the carry that reaches A_k through a sum-9 column k-1 from the columns below it
#   (the TriAdd cascade of their TriCase states); subtraction MD, MB, MZ, MT the same with difference,
#   borrow, equal digits and the borrow cascade (ND, NB, NZ, NT on the swapped digits of a negative answer);
#   SGN the answer's sign; OPR the operator (mixed models).
ADD_TASKS, SUB_TASKS = ["SA", "SC", "SS", "ST"], ["D", "B", "Z", "T"]  # sub tasks take an M or N prefix
FAMILIES = {"add": ADD_TASKS, "sub": ["M" + s for s in SUB_TASKS], "neg": ["N" + s for s in SUB_TASKS],
            "sign": ["SGN"], "operator": ["OPR"]}


def family_of(task: str) -> str:
    """'SA' -> 'add', 'MB' -> 'sub', 'NT' -> 'neg', 'SGN' -> 'sign', 'OPR' -> 'operator'."""
    return next(f for f, tasks in FAMILIES.items() if task in tasks)


def answer_label(k: int, n: int) -> str:
    """Answer digit k (0..n) is 'A<k>'; the sign is 'A<n+1>', as in the Impact tags."""
    return f"A{k}"


def _draw(B, n, op, gen, p_special=0.3):
    """Random digits (B, n) units first, with p_special of the cells made sum-9 (add) or equal (sub),
    the cascade triggers the pairs need."""
    x, y = torch.randint(0, 10, (B, n), generator=gen), torch.randint(0, 10, (B, n), generator=gen)
    special = torch.rand(B, n, generator=gen) < p_special
    return x, torch.where(special, 9 - x if op == "add" else x, y)


def _cols(task, k, n, column=None):
    """The columns (units first) whose digits carry sub-task `task` of answer digit k: the store
    re-draws exactly these; a decoy store keeps exactly these. `column` j picks one level of a cascade
    (ST, MT, NT): the TriCase state of column j alone."""
    step = task if task in ADD_TASKS else task[1]
    if column is not None:
        return [column]
    return {"SA": [k], "D": [k], "SC": [k - 1], "B": [k - 1], "SS": [k - 1], "Z": [k - 1]}.get(step, list(range(k - 1)))


def _pair_rule(task, k, n, xa, ya, xs, ys, column=None):
    """For sub-task `task` of answer digit k: (keep (B,) bool, expected digit (B,)). `keep` says the pair tests the claim: the store differs from the alter
    only in that sub-task's value, and the claim predicts a change. The expected digit combines the
    store's sub-task value with the alter's rest. A cascade (ST, MT, NT) runs through column k-1, or with
    `column` j from column j through every column between j and k."""
    low = k - 1 if column is None else column + 1  # the columns low..k-1 must pass the cascade on
    if task in ADD_TASKS:
        a, s = add_subtasks(xa, ya), add_subtasks(xs, ys)
        not9 = ~a["SS"][:, k] if k < n else torch.ones(len(xa), dtype=torch.bool)  # no onward cascade
        sa_k = a["SA"][:, k] if k < n else 0
        if task == "SA":
            keep, exp = a["ST"][:, k] == s["ST"][:, k], (s["SA"][:, k] + a["carry"][:, k]) % 10
        elif task == "SC":
            keep = (a["SA"][:, k - 1] == s["SA"][:, k - 1]) & (a["SC"][:, k - 1] != s["SC"][:, k - 1]) & not9
            exp = (sa_k + s["SC"][:, k - 1].long()) % 10
        elif task == "SS":  # a carry reaches column k-1; whether it sums to 9 decides if it reaches A_k
            keep = ((a["SC"][:, k - 1] == s["SC"][:, k - 1]) & (a["SS"][:, k - 1] != s["SS"][:, k - 1])
                    & (a["carry"][:, k - 1] == 1) & not9)
            exp = (sa_k + (a["SC"][:, k - 1] | s["SS"][:, k - 1]).long()) % 10
        else:  # ST: the carry cascaded through sum-9 columns low..k-1 from the columns below them
            keep = a["SS"][:, low:k].all(1) & (a["carry"][:, k] != s["carry"][:, k]) & not9
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
    elif task[1] == "Z":  # a borrow reaches column k-1; whether its digits are equal decides if it reaches A_k
        keep = ((a[p + "B"][:, k - 1] == s[p + "B"][:, k - 1]) & (a[p + "Z"][:, k - 1] != s[p + "Z"][:, k - 1])
                & (a["borrow"][:, k - 1] == 1) & not0)
        exp = (a[p + "D"][:, k] - (a[p + "B"][:, k - 1] | s[p + "Z"][:, k - 1]).long()) % 10
    else:  # T: the borrow cascaded through equal columns low..k-1
        keep = a[p + "Z"][:, low:k].all(1) & (a["borrow"][:, k] != s["borrow"][:, k]) & not0
        exp = (a[p + "D"][:, k] - s["borrow"][:, k]) % 10
    return keep & right_sign, exp


def cascade_columns(task: str, k: int):
    """The single columns j a cascade sub-task (ST, MT, NT) of digit k is also tested on: 0..k-2 when
    there are at least two (with one, column 0 alone is the whole cascade)."""
    return list(range(k - 1)) if task in ("ST", "MT", "NT") and k >= 3 else []


def subtask_digits(task: str, n: int):
    """The answer digits k a sub-task can be tested on (the sign is digit n+1)."""
    if task == "SGN":  # the sign token, and each digit below A_n (A_n of a difference is always 0)
        return [n + 1] + list(range(n))
    if task == "OPR":
        return list(range(n + 2))
    first = {"SA": 0, "SC": 1, "SS": 2, "ST": 2, "D": 0, "B": 1, "Z": 2, "T": 2}[task if task in ADD_TASKS else task[1]]
    # a subtraction answer's A_n is always 0, and a borrow out of the top column would flip the sign
    last = n if task in ("SC", "SS", "ST") else n - 1
    return list(range(first, last + 1))


def _val(d):
    return data.value_of(d.flip(1))  # units-first digits (B, n) -> ints (B,)


def _questions(x, y, is_sub, n):
    """Units-first digits (B, n) and per-row operator (B,) bool -> question tokens (B, 3n+4)."""
    add, sub = data.make_questions(_val(x), _val(y), "add", n), data.make_questions(_val(x), _val(y), "sub", n)
    return torch.where(is_sub[:, None], sub, add)


def make_pairs(task: str, k: int, n: int, count: int, gen: torch.Generator, tries=40, column=None, chain=False):
    """`count` store/alter question pairs for the claim "a node carries sub-task `task` of answer digit k".
    Returns (store tokens, alter tokens, expected answer tokens), each (count', ...), count' <= count
    (fewer only when such pairs are rare). The store is the alter with the sub-task's columns re-drawn
    (with `column` j, a cascade sub-task's column j only), every other digit of the alter random. The
    expected answer is the alter's with digit k replaced by the framework's prediction; for 'SGN' the sign
    flips (k = n+1) or A_k is computed on the other path (ND instead of MD, or MD instead of ND) from the
    alter's digits; for 'OPR' (the store has the other operator) answer token k becomes the store's.
    With `chain`, a fourth tensor, the other answer the claim accepts: with `column`, the node passes
    column j's state to every digit it reaches (digits j+1..k become the store's); for 'OPR', digit k is
    computed with the other operator on the alter's sign (MD of an add alter even when D < D', SA of a
    subtract alter); otherwise the same as the third."""
    op = "add" if task in ADD_TASKS else "sub"
    stores, alters, expects, chains, have = [], [], [], [], 0
    for _ in range(tries):
        if have >= count:
            break
        xa, ya = _draw(16 * count, n, op, gen)
        xs, ys = xa.clone(), ya.clone()
        is_sub = torch.full((len(xa),), op == "sub")
        col = n + 1 - k                                                     # answer token of digit k
        if task == "OPR":  # half the alters add, half subtract; the store has the other operator
            is_sub = torch.rand(len(xa), generator=gen) < 0.5
            keep, exp = torch.ones(len(xa), dtype=torch.bool), None
        elif task == "SGN":  # swap the digits of the highest column where they differ: the sign flips
            top = ((xa != ya) * torch.arange(1, n + 1)).argmax(1)           # (B,)
            rows = torch.arange(len(xa))
            xs[rows, top], ys[rows, top] = ya[rows, top], xa[rows, top]
            keep, exp = (xa != ya).any(1), None
            if k <= n:  # the sign as digit k uses it: A_k from the other path (ND if D >= D', MD if not)
                m, neg = sub_subtasks(xa, ya, "M"), sub_subtasks(ya, xa, "N")
                exp = torch.where(m["borrow"][:, n].bool(), m["digits"][:, k], neg["digits"][:, k])
        else:
            cols = _cols(task, k, n, column)
            xr, yr = _draw(len(xa), n, op, gen)
            xs[:, cols], ys[:, cols] = xr[:, cols], yr[:, cols]
            keep, exp = _pair_rule(task, k, n, xa, ya, xs, ys, column)
        alter = _questions(xa, ya, is_sub, n)
        store = _questions(xs, ys, is_sub ^ (task == "OPR"), n)
        want = alter[:, data.answer_slice(n)].clone()                       # (B, n+2) sign A(n)..A0
        if exp is None:  # SGN, OPR: the store's own answer token
            want[:, col] = store[:, data.answer_slice(n)][:, col]
        else:
            want[:, col] = exp
        keep &= (want != alter[:, data.answer_slice(n)]).any(1)            # the claim predicts a change
        every = want.clone()
        if column is not None:  # answer tokens of digits column+1..k
            every[:, col:n + 1 - column] = store[:, data.answer_slice(n)][:, col:n + 1 - column]
        if task == "OPR" and k <= n:  # the other operator on the alter's sign: an add alter's digit from MD
            other = torch.where(is_sub, add_subtasks(xa, ya)["digits"][:, k], sub_subtasks(xa, ya)["digits"][:, k])
            every[:, col] = other
        truth = alter[:, data.answer_slice(n)]
        every = torch.where((every != truth).any(1, keepdim=True), every, want)  # an alternative must predict a change
        stores.append(store[keep]), alters.append(alter[keep]), expects.append(want[keep]), chains.append(every[keep])
        have += int(keep.sum())
    out = [torch.cat(t)[:count] for t in (stores, alters, expects, chains)]
    return tuple(out) if chain else tuple(out[:3])


def make_decoys(task: str, k: int, n: int, alter: torch.Tensor, gen: torch.Generator, column=None) -> torch.Tensor:
    """Decoy stores (B, P) for the alters (B, P) of a claim: each keeps the alter's operator and the
    digits that carry the claimed sub-task (for SGN every column from the highest one where D and D'
    differ; for OPR none) and re-draws every other digit. A decoy shares the alter's value of the
    sub-task and differs in others, so a node that passes the claim when patched from its decoy
    passes without the sub-task's information: a false positive."""
    a, b, is_sub, _ = data.parse_questions(alter, n)
    xa, ya = column_digits(a, n), column_digits(b, n)                       # (B, n) units first
    xr, yr = torch.randint(0, 10, (2, *xa.shape), generator=gen)
    if task == "SGN":
        top = ((xa != ya) * torch.arange(1, n + 1)).argmax(1, keepdim=True)  # (B, 1)
        fixed = torch.arange(n)[None, :] >= top
    else:
        fixed = torch.zeros(n, dtype=torch.bool)
        fixed[[] if task == "OPR" else _cols(task, k, n, column)] = True
        fixed = fixed.expand_as(xa)
    return _questions(torch.where(fixed, xa, xr), torch.where(fixed, ya, yr), is_sub, n)


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
