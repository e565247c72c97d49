"""
Arithmetic questions as tokens: encoding, a vectorised batch generator with the papers' enrichment
(`enrich`) and this project's short operands (`shorten`, off unless asked for), how hard each question
is (its complexity class), the named question sets the papers used, and this project's sparse and stress
sets (kinds of question uniform ones seldom are).

    python data.py --task sub --digits 6       # prints a few questions with their complexity

One format for every task (the Math notebooks' format): `D(n-1)..D0 op D'(n-1)..D'0 = sign A(n)..A0`, operands
zero-padded to n digits, the answer as a sign (`+` also for 0) and n+1 digits of |answer|:

    12345+33333=+045678        550030-800020=-0249990        (n_ctx = 3n + 4 tokens)

Every sequence is exactly n_ctx tokens; there is no BOS/PAD/EOS. Token p+1 is predicted at position p,
so the n+2 answer tokens are read from the logits at the n+2 positions just before them.
Left out on purpose: multiplication (the papers train no multiplication model) and a within-batch
add/sub mix (the reference picks one operator per batch; so do we).
"""
import argparse

import torch

VOCAB = "0123456789+-=*\\"  # token id = index: digits 0-9, PLUS 10, MINUS 11, EQUALS 12, MULT 13, DIV 14
PLUS, MINUS, EQUALS = 10, 11, 12
OPS = {"add": PLUS, "sub": MINUS}
MAX_DIGITS = 10  # 10-digit answers still fit in int64 with room to spare


def check_digits(n_digits: int) -> int:
    if not isinstance(n_digits, int) or not 1 <= n_digits <= MAX_DIGITS:
        raise ValueError(f"digits must be an integer from 1 to {MAX_DIGITS}, not {n_digits!r}")
    return n_digits


def n_ctx(n_digits: int) -> int:
    return 3 * n_digits + 4


def answer_slice(n_digits: int) -> slice:
    """Where the n+2 answer tokens (sign, A(n)..A0) sit in a question."""
    return slice(2 * n_digits + 2, 3 * n_digits + 4)


def logit_slice(n_digits: int) -> slice:
    """The positions whose logits predict the answer tokens (one to the left of each)."""
    return slice(2 * n_digits + 1, 3 * n_digits + 3)

# ----------------------------------------------------------------------------- strings and tokens


def encode(s: str) -> torch.Tensor:
    """'12345+33333=+045678' -> tensor([1, 2, 3, 4, 5, 10, 3, ...]). ValueError naming the first character
    outside the vocabulary and its position (0-based)."""
    if not isinstance(s, str):
        raise ValueError(f"encode takes a string such as '12345+33333=', not a {type(s).__name__}")
    for i, c in enumerate(s):
        if c not in VOCAB:
            raise ValueError(f"{s!r}: character {c!r} at position {i} is not one of {VOCAB!r}")
    return torch.tensor([VOCAB.index(c) for c in s], dtype=torch.long)


def decode(tokens):
    """A 1-D tensor gives one string, a 2-D tensor a list of strings. ValueError for an id outside VOCAB."""
    if tokens.dim() == 2:
        return [decode(t) for t in tokens]
    ids = tokens.tolist()
    bad = [t for t in ids if not 0 <= t < len(VOCAB)]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary: ids run from 0 to {len(VOCAB) - 1}")
    return "".join(VOCAB[t] for t in ids)


def digits_of(values: torch.Tensor, n: int) -> torch.Tensor:
    """Non-negative int64 values (B,) -> their n digits (B, n), most significant first."""
    powers = 10 ** torch.arange(n - 1, -1, -1, device=values.device)  # (n,)
    return values[:, None] // powers % 10


def value_of(digits: torch.Tensor) -> torch.Tensor:
    """(..., n) digits, most significant first -> (...) int64 values."""
    n = digits.shape[-1]
    return digits @ (10 ** torch.arange(n - 1, -1, -1, device=digits.device))


def read_answer(answer_tokens: torch.Tensor) -> torch.Tensor:
    """(B, n+2) tokens `sign A(n)..A0` -> (B,) signed int64. Used on true and on predicted answers."""
    sign = torch.where(answer_tokens[:, 0] == MINUS, -1, 1)
    return sign * value_of(answer_tokens[:, 1:])


def make_questions(a: torch.Tensor, b: torch.Tensor, op: str, n_digits: int) -> torch.Tensor:
    """Operands (B,) int64 in [0, 10^n) and op 'add' or 'sub' -> tokens (B, 3n+4) with the true answer."""
    check_digits(n_digits)
    a, b = torch.as_tensor(a, dtype=torch.long), torch.as_tensor(b, dtype=torch.long)
    if (a < 0).any() or (b < 0).any() or (a >= 10 ** n_digits).any() or (b >= 10 ** n_digits).any():
        raise ValueError(f"operands must lie in [0, 10^{n_digits})")
    answer = a + b if op == "add" else a - b
    B, dev = a.shape[0], a.device
    col = lambda tok: torch.full((B, 1), tok, dtype=torch.long, device=dev)  # noqa: E731
    sign = torch.where(answer < 0, MINUS, PLUS)[:, None]
    return torch.cat([digits_of(a, n_digits), col(OPS[op]), digits_of(b, n_digits), col(EQUALS),
                      sign, digits_of(answer.abs(), n_digits + 1)], dim=1)


def parse_questions(tokens: torch.Tensor, n_digits: int):
    """tokens (B, 3n+4) -> (a, b, is_sub, answer), each (B,)."""
    n = n_digits
    return (value_of(tokens[:, :n]), value_of(tokens[:, n + 1:2 * n + 1]), tokens[:, n] == MINUS,
            read_answer(tokens[:, answer_slice(n)]))

# ----------------------------------------------------------------------------- random batches


def enrich(x, y, op: str, gen: torch.Generator, p_batch=0.6, p_cell=0.4, p_negative=0.2, by="batch"):
    """Make rare, hard questions common (the Math_Train notebook's enrichment). x, y: (B, n) digits, edited in place.

    Uniform digits almost never produce long carry cascades (a 4-level cascade needs four sum-9 columns
    in a row: about 1 question in 10^4). With probability p_batch a batch is enriched: p_cell of its
    digit cells are rewritten so that the column sums to 9 (addition: the carry-cascade trigger) or the
    two digits are equal (subtraction: the borrow-cascade trigger). For subtraction, with probability
    p_negative (before that) every y digit below 9 is raised by one, for more negative answers.
    by="question" (not in the papers) draws all of this per question instead of per batch: every batch
    then holds about p_batch enriched questions, each cell of them rewritten with probability p_cell.
    Raises ValueError for another `by`."""
    if by not in ("batch", "question"):
        raise ValueError(f"unknown enrich_by {by!r} (use batch or question)")
    B, n = x.shape
    r = torch.rand(B, 1, generator=gen) if by == "question" else torch.rand((), generator=gen)  # (B, 1) or ()
    if op == "sub":
        y += ((r < p_negative) & (y < 9)).long()  # before the rewrite, as the notebook
    if by == "question":
        cells = (r < p_batch) & (torch.rand(B, n, generator=gen) < p_cell)  # (B, n)
    elif r >= p_batch:
        return x, y  # a plain batch
    else:
        cells = torch.zeros(B * n, dtype=torch.bool)
        cells[torch.randperm(B * n, generator=gen)[:int(p_cell * B * n)]] = True
        cells = cells.view(B, n)
    first = torch.rand(r.shape, generator=gen) < 0.5  # rewrite x, else y: per question or per batch
    rewrite_x, rewrite_y = cells & first, cells & ~first  # (B, n)
    x[rewrite_x] = (9 - y if op == "add" else y)[rewrite_x]
    y[rewrite_y] = (9 - x if op == "add" else x)[rewrite_y]
    return x, y


def shorten(x, y, gen: torch.Generator, p_short=0.1, p_sparse=0.0):
    """Make short and sparse operands common (not in the papers). x, y: (B, n) digits, most significant
    first, edited in place. With probability p_short a question has the top k columns of both operands
    set to 0 (k uniform in 1..n-1: short operands, so that carries and borrows into 0-and-0 columns with
    only zeros above, 00055+00045=+000100, are common); with probability p_sparse instead, a random set
    of columns, each cleared with a probability drawn uniformly per question (sparse operands:
    00500+00500, 100080-000090, a carry out of a lone column). In uniform questions both are rare enough
    that fast models answered a million of them right and still got these wrong."""
    B, n = x.shape
    if n < 2 or p_short + p_sparse <= 0:
        return x, y
    k = torch.randint(1, n, (B, 1), generator=gen)                            # (B, 1) digits to clear
    r = torch.rand(B, 1, generator=gen)                                       # (B, 1) which kind, if any
    clear = (torch.arange(n) < k) & (r < p_short)                             # (B, n) short: top k columns
    if p_sparse > 0:
        scattered = torch.rand(B, n, generator=gen) < torch.rand(B, 1, generator=gen)  # (B, n)
        clear |= scattered & (r >= p_short) & (r < p_short + p_sparse)
    x[clear], y[clear] = 0, 0
    return x, y


def near_nines(x, y, gen: torch.Generator, p=0.1):
    """Make a carry into a column summing to 7 or 8 common (addition; not in the papers). x, y: (B, n) digits,
    most significant first, edited in place. With probability p a question gets one column c above the
    units whose digits sum to 7 or 8 and which takes a carry: the column below sums to 10-18, or up to two
    sum-9 columns pass a carry up from one that does (78499+61409: 9+9 carries, 9+0 passes it on, 4+4 takes
    it and must not carry out). The digit above c then hangs on the TriCase state of c alone (the ST
    sub-task of "Increasing Trust in Language Models through the Reuse of Verified Circuits"): T8 (sums 0-8)
    takes the carry in and passes none on, T9 passes it on. Fast adders that answered a million uniform
    questions right still carried out of such columns on 1 seed in 5 (docs/training.md). Other columns
    keep their digits."""
    B, n = x.shape
    if n < 2 or p <= 0:
        return x, y
    rows = (torch.rand(B, generator=gen) < p).nonzero().squeeze(1)            # (m,) questions to edit
    m = len(rows)
    c = torch.randint(0, n - 1, (m,), generator=gen)                         # (m,) the column, not the units
    k = (torch.rand(m, generator=gen) * ((n - 2 - c).clamp(max=2) + 1)).long()  # (m,) sum-9 columns under it
    col = torch.arange(n)                                                    # (n,)
    target = torch.full((m, n), -1)                                          # (m, n) column sums; -1: keep
    target[(col > c[:, None]) & (col <= (c + k)[:, None])] = 9
    target = torch.where(col == (c + k + 1)[:, None], torch.randint(10, 19, (m, n), generator=gen), target)
    target[col == c[:, None]] = 7 + torch.randint(0, 2, (m,), generator=gen)
    lo, hi = (target - 9).clamp(min=0), target.clamp(max=9)                  # (m, n) the x digits allowed
    xd = lo + (torch.rand(m, n, generator=gen) * (hi - lo + 1)).long()       # (m, n) x digit, y = sum - x
    edit = target >= 0
    x[rows], y[rows] = torch.where(edit, xd, x[rows]), torch.where(edit, target - xd, y[rows])
    return x, y


def random_batch(task: str, n_digits: int, batch_size: int, gen: torch.Generator, perc_sub: float = 50,
                 enrichment: bool = True, device="cpu", p_short: float = 0.0, p_sparse: float = 0.0,
                 mix_by: str = "batch", enrich_by: str = "batch", p_near9: float = 0.0) -> torch.Tensor:
    """A batch of fresh questions (B, 3n+4), drawn on the CPU from `gen` (so the same seed gives the same
    batches on any device). For 'mix', mix_by="batch" gives one operator for the whole batch, sub with
    probability perc_sub % (the papers' Math notebooks); mix_by="question" gives every batch
    round(B * perc_sub / 100) subtraction questions and the rest additions (subtractions first; each part
    enriched and shortened on its own).
    `enrichment` is the papers' (`enrich`, drawn per batch; enrich_by="question": per question); `p_short`
    or `p_sparse` > 0 adds `shorten` after it (the fast default has short operands), then `p_near9` > 0
    `near_nines` to additions (subtractions keep theirs). Raises ValueError for
    an unknown task, mix_by or enrich_by."""
    if mix_by not in ("batch", "question"):
        raise ValueError(f"unknown mix_by {mix_by!r} (use batch or question)")
    if task == "mix" and mix_by == "question":
        n_sub = round(batch_size * perc_sub / 100)
        parts = [random_batch(op, n_digits, n, gen, enrichment=enrichment, p_short=p_short, p_sparse=p_sparse,
                              enrich_by=enrich_by, p_near9=p_near9)
                 for op, n in (("sub", n_sub), ("add", batch_size - n_sub)) if n > 0]
        return torch.cat(parts).to(device)  # (B, 3n+4)
    if task == "mix":
        task = "sub" if torch.rand((), generator=gen).item() * 100 < perc_sub else "add"
    if task not in OPS:
        raise ValueError(f"unknown task {task!r} (use add, sub or mix)")
    x = torch.randint(0, 10, (batch_size, n_digits), generator=gen)
    y = torch.randint(0, 10, (batch_size, n_digits), generator=gen)
    if enrichment:
        enrich(x, y, task, gen, by=enrich_by)
    if p_short + p_sparse > 0:
        shorten(x, y, gen, p_short, p_sparse)
    if task == "add" and p_near9 > 0:
        near_nines(x, y, gen, p_near9)
    return make_questions(value_of(x), value_of(y), task, n_digits).to(device)

# ----------------------------------------------------------------------------- complexity


COMPLEXITY = ["S0", "S1", "S2", "S3", "S4", "S5", "M0", "M1", "M2", "M3", "M4+", "N1", "N2", "N3", "N4+"]


def _cascade(trigger: torch.Tensor, chain: torch.Tensor, limit: int) -> torch.Tensor:
    """Per question, the longest run of `chain` columns directly above a `trigger` column, capped at
    `limit`. Both (B, n) bools indexed units-first. -1 where no column triggers."""
    B, n = trigger.shape
    best = torch.full((B,), -1, dtype=torch.long, device=trigger.device)
    run = torch.zeros(B, dtype=torch.long, device=trigger.device)  # chain run starting at column i+1
    for i in range(n - 1, -1, -1):  # a loop over digits, not questions
        length = torch.where(trigger[:, i], run.clamp(max=limit), -1)
        best = torch.maximum(best, length)
        run = torch.where(chain[:, i], run + 1, 0)
    return best


def complexity(tokens: torch.Tensor, n_digits: int) -> torch.Tensor:
    """Complexity class of each question as an index into COMPLEXITY (the papers' S/M classes; the N classes
    as the verified_transformers library grades them).

    Addition: S0 no carry; S1 carries but none cascades; S2..S5 a carry cascading through 1..4+ sum-9 columns.
    Subtraction with answer >= 0: M0 no borrow; M1 borrows; M2..M4+ a borrow cascading through 1..3+
    equal-digit columns. Negative answers: N1..N4+ with the same borrow cascades, counting equal
    columns only up to the highest non-zero operand digit."""
    n = n_digits
    x = tokens[:, :n].flip(1)               # (B, n) units first
    y = tokens[:, n + 1:2 * n + 1].flip(1)
    is_sub = tokens[:, n] == MINUS
    s, d = x + y, x - y
    add_class = 1 + _cascade(s > 9, s == 9, 4)             # S0..S5 (0 when no carry at all)
    above = torch.arange(n, device=tokens.device) > ((x + y) > 0).long().cumsum(1).argmax(1, keepdim=True)
    sub_class = 7 + _cascade(d < 0, d == 0, 3)             # M0..M4+
    neg_class = 11 + _cascade(d < 0, (d == 0) & ~above, 3)  # N1..N4+
    negative = value_of(tokens[:, :n]) < value_of(tokens[:, n + 1:2 * n + 1])
    return torch.where(is_sub, torch.where(negative, neg_class, sub_class), add_class)

# ----------------------------------------------------------------------------- named question sets

# The Math_Analyse notebook's hand-made sets, as "a+b" / "a-b" strings.
HANDMADE = {
    "Add.S0": "0+0 1+3 12345+33333 33333+12345 45762+33113 888+11111 2362+23123 15+81 1000+4441 4440+11111 24033+25133 23533+21133 32500+1 31500+1111 5500+12323 4500+2209 33345+66643 66643+33345 10770+44111 60000+31111 10000+21111 107700+441111 600000+311111 100000+211111 1077000+4411111 6000000+3111111 1000000+2111111 10770000+44111111 60000000+3111111 10000000+2111111",
    "Add.S1": "15+45 27+55 35+59 150+451 270+551 350+591 1500+4511 2700+5511 3500+5911 40035+41149 70000+41111 15000+25111 35000+35111 45000+35111 67000+25111 19000+76111 15020+45091 25002+55019 35002+59019 150211+450911 250021+550191 350021+590191 1502111+4509111 2500211+5501911 3500211+5901911 15021111+45091111 25002111+55019111 35002111+59019111",
    "Add.S2": "55+45 45+55 45+59 35+69 25+79 15+85 15+88 15518+14511 14518+15511 24533+25933 23533+26933 32511+7911 31511+8511 551+451 451+551 10881+41127 41127+10881 12386+82623 108811+411271 411271+108811 123861+826231 994890+80105 970590+96026 994890+80105 970590+96026 1088111+4112711 4112711+1088111 1238611+8262311 10881111+41127111 41127111+10881111 12386111+82623111",
    "Add.S3": "555+445 3340+6661 8880+1121 1120+8881 123+877 877+123 321+679 679+321 1283+78785",
    "Add.S4": "5555+4445 55550+44451 3334+6666 33340+66661 8888+1112 88880+11121 1234+8766 4321+5679",
    "Add.S5": "44445+55555 33334+66666 88888+11112 12345+87655 54321+45679 45545+54455 36634+63366 81818+18182 87345+12655 55379+44621",
    "Add.SN": "1+0 4+3 5+5 8+1 40+31 44+46 400+311 440+461 800+111 270+471 600+311 4000+3111 4400+4611 6000+3111 7000+4111 40000+31111 44000+45111 60000+31111 70000+41111 10000+21111 15000+25111 35000+35111 45000+85111 67000+85111 99000+76111 76000+99111 670000+851111 990000+761111 760000+991111 6700000+8511111 9900000+7611111 7600000+9911111 67000000+85111111 99000000+76111111 76000000+99111111",
    "Sub.M0": "0-0 6-6 61-60 611-600 6111-6000 61111-60000 611111-600000 6111111-6000000 61111111-60000000 66666-12345 33333-12321 45762-34551 78901-78901 23123-23123 86-15 4440-1230 88746-86544 27833-25133 23533-21133 32501-1 31511-1111 55555-12323 45454-22022 66643-3341 66643-30042 99999-44012 61111-30000 99111-99111 999991-440120 611111-300000 991111-991111 9999911-4401200 6111111-3000000 9911111-9911111 99999111-44012000 61111111-30000000 99111111-99111111",
    "Sub.M1": "22222-11113 22222-11131 22222-11311 22222-13111 14-8 141-80 1411-800 14111-8000 55514-11108 55141-11080 51411-10800 140111-8000 88888-22229 77777-22292 66666-22922 888888-222292 777777-222922 666666-229222 8888888-2222922 7777777-2229222 6666666-2292222 88888888-22229222 77777777-22292222 66666666-22922222",
    "Sub.M2": "22212-11113 22122-11131 21222-11311 904-8 9041-80 90411-800 55514-11118 55141-11180 51411-11800 88888-22289 77777-22792 66666-26922 888888-222892 777777-227922 666666-269222 8888888-2228922 7777777-2279222 6666666-2692222 88888888-22289222 77777777-22792222 66666666-26922222",
    "Sub.M3": "22112-11113 21122-11131 99004-8 90041-80 55114-11118 51140-11180 88888-22889 87777-27792 888888-228892 877777-277922 8888888-2288922 7777777-2779222 88888888-22889222 77777777-28892222",
    "Sub.NG": "0-1 7-9 12345-33333 888-11111 2362-23123 15-81 1111-4440 24033-25133 23533-88133 5511-12323 4511-22209 88888-88889 55555-55556 88881-88891 55551-55561 88811-88911 55511-55611 88746-89544 27833-29133 23533-23833 31511-41111 55555-62323 45454-72022 66643-73341 66643-90042 99998-99999 8-12 41-232 44-523 234-334 7777-8434 88888-92222 77777-84340 888888-922220 777777-843400 8888888-9222200 7777777-8434000 88888888-92222000 77777777-84340000",
}


def rule_pairs(op: str, n_digits: int):
    """Edge cases generated by rule for any n: every cascade length up to n, and the extreme operands."""
    n, top = n_digits, 10 ** n_digits - 1
    if op == "add":
        pairs = [(0, 0), (top, top), (top, 0), (0, top), (top, 1), (1, top)]
        for k in range(1, n + 1):  # a carry made in column 0 and cascaded through k-1 nines: 00999+00001
            pairs += [(10 ** k - 1, 1), (1, 10 ** k - 1), (10 ** k - 5, 5), (5 * 10 ** (k - 1), 5 * 10 ** (k - 1))]
    else:
        pairs = [(0, 0), (top, top), (top, 0), (0, top), (0, 1), (1, 0), (top - 1, top), (top, top - 1)]
        for k in range(1, n + 1):  # a borrow cascaded through k-1 zeros: 10000-00001, and its negative
            pairs += [(10 ** (k - 1), 1), (1, 10 ** (k - 1)), (10 ** k - 1, 10 ** k - 1), (10 ** (k - 1), 10 ** (k - 1) + 1)]
    return [(a, b) for a, b in dict.fromkeys(pairs) if a <= top and b <= top]


def named_sets(task: str, n_digits: int) -> dict:
    """{name: tokens (B, 3n+4)} for the task's operations: the hand-made sets (pairs that do not fit in
    n digits are dropped, as the reference does) plus `Add.rule` / `Sub.rule` from `rule_pairs`."""
    check_digits(n_digits)
    ops = {"add": ["add"], "sub": ["sub"], "mix": ["add", "sub"]}[task]
    sets = {}
    for name, text in HANDMADE.items():
        op = "add" if name.startswith("Add") else "sub"
        if op in ops:
            pairs = [tuple(int(v) for v in q.split("+" if op == "add" else "-")) for q in text.split()]
            pairs = [(a, b) for a, b in pairs if max(a, b) < 10 ** n_digits]
            if pairs:
                sets[name] = make_questions(*torch.tensor(pairs).T, op, n_digits)
    for op in ops:
        sets[op.capitalize() + ".rule"] = make_questions(*torch.tensor(rule_pairs(op, n_digits)).T, op, n_digits)
    return sets



def sparse_pairs(n_digits: int, sample=None, gen: torch.Generator = None) -> torch.Tensor:
    """Operand pairs (B, 2) that are non-zero in at most two columns (the same columns for both
    operands): 00500+00500, 00095+00005, 19000+31000. Every digit pair in every single column, and
    for two columns every one of the 10^4 digit combinations of each column pair (C(n,2) * 10^4 pairs:
    100,000 at n = 5) or, with `sample`, that many drawn from `gen`. Duplicates removed.
    Uniform questions almost never have them (a 6-digit operand has four zero columns in ~1 of 10^4), and
    models verified on 10^6 uniform questions failed 500000+500000, 95+5, 0-100000 and 19000-31000."""
    n = check_digits(n_digits)
    p = 10 ** torch.arange(n)                                          # (n,) column values, units first
    d = torch.arange(100)                                              # one column: every digit pair
    pairs = [torch.stack([d // 10 * p[c], d % 10 * p[c]], 1) for c in range(n)]
    cols = torch.combinations(torch.arange(n), 2)                      # (K, 2) column pairs, K = C(n, 2)
    if len(cols):
        if sample is None:
            which = cols.repeat_interleave(10_000, 0)                  # (K*10^4, 2)
            digits = digits_of(torch.arange(10_000), 4).repeat(len(cols), 1)  # (K*10^4, 4)
        else:
            which = cols[torch.randint(len(cols), (sample,), generator=gen)]  # (sample, 2)
            digits = torch.randint(0, 10, (sample, 4), generator=gen)
        lo, hi = p[which[:, 0]], p[which[:, 1]]
        pairs.append(torch.stack([digits[:, 0] * lo + digits[:, 1] * hi, digits[:, 2] * lo + digits[:, 3] * hi], 1))
    return torch.unique(torch.cat(pairs), dim=0)


STRESS = ("digits 0,1,8,9", "digits 0,9", "digits 4,5", "digits 0,4,5,9", "an operand 0, 1 or 10^n-1",
          "b within 999 of a", "a+b within 50 of 10^k", "random lengths", "columns summing to 9",
          "columns of equal digits")


def stress_pairs(n_digits: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """n operand pairs (n, 2) in [0, 10^n_digits), each from one of the STRESS families (drawn uniformly):
    every digit of both operands from a small alphabet at the edges of carrying and borrowing; one operand
    0, 1 or 10^n-1 (either side) and the other uniform; b = a + d for d uniform in [-999, 999] (a = b
    included: long equal prefixes, where the sign is decided deep down); a + b = 10^k + d, |d| <= 50 (a
    carry cascade to the top); each operand uniform below 10^k, k uniform in 1..n digits; and every
    column summing to 9, or every column's digits equal, except ~20% of cells left random (cascades).
    Not in the papers: kinds of question an outside evaluator might try, that uniform questions seldom
    are (a checked 6-digit mixed model got 900999-091809 wrong: 1 in ~10^6 of the alphabet questions)."""
    nd = check_digits(n_digits)
    top = 10 ** nd
    uniform = lambda: torch.randint(top, (n,), generator=gen)               # noqa: E731
    da, db = torch.randint(10, (2, n, nd), generator=gen)                   # (n, nd) random digits
    keep = torch.rand(n, nd, generator=gen) < 0.2                           # (n, nd) cells left random
    fam = {}
    for name, alphabet in zip(STRESS[:4], ([0, 1, 8, 9], [0, 9], [4, 5], [0, 4, 5, 9])):
        al = torch.tensor(alphabet)
        fam[name] = value_of(al[torch.randint(len(al), (2, n, nd), generator=gen)])  # (2, n)
    a, edge = uniform(), torch.tensor([0, 1, top - 1])[torch.randint(3, (n,), generator=gen)]
    swap = torch.rand(n, generator=gen) < 0.5
    fam[STRESS[4]] = torch.stack([torch.where(swap, edge, a), torch.where(swap, a, edge)])
    a = uniform()
    fam[STRESS[5]] = torch.stack([a, (a + torch.randint(-999, 1000, (n,), generator=gen)).clamp(0, top - 1)])
    k = torch.randint(1, nd + 1, (n,), generator=gen)
    a = uniform() % 10 ** k
    fam[STRESS[6]] = torch.stack([a, (10 ** k - a + torch.randint(-50, 51, (n,), generator=gen)).clamp(0, top - 1)])
    fam[STRESS[7]] = torch.stack([uniform() % 10 ** torch.randint(1, nd + 1, (n,), generator=gen),
                                  uniform() % 10 ** torch.randint(1, nd + 1, (n,), generator=gen)])
    fam[STRESS[8]] = torch.stack([value_of(da), value_of(torch.where(keep, db, 9 - da))])
    fam[STRESS[9]] = torch.stack([value_of(da), value_of(torch.where(keep, db, da))])
    pick = torch.randint(len(STRESS), (n,), generator=gen)                  # (n,) each question's family
    both = torch.stack([fam[name] for name in STRESS])                      # (families, 2, n)
    return both[pick, :, torch.arange(n)]                                   # (n, 2)


def sparse_sets(task: str, n_digits: int, sample=None, gen: torch.Generator = None) -> dict:
    """{"Add.sparse" / "Sub.sparse": tokens (B, 3n+4)} for the task's operations, from `sparse_pairs`
    (the same pairs for both operations)."""
    pairs = sparse_pairs(n_digits, sample, gen)
    ops = {"add": ["add"], "sub": ["sub"], "mix": ["add", "sub"]}[task]
    return {op.capitalize() + ".sparse": make_questions(pairs[:, 0], pairs[:, 1], op, n_digits) for op in ops}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Print a few generated questions with their complexity.")
    p.add_argument("--task", default="add", choices=["add", "sub", "mix"], help="operation(s) to generate")
    p.add_argument("--digits", type=int, default=5, help=f"digits per operand, 1 to {MAX_DIGITS}")
    p.add_argument("--n", type=int, default=8, help="how many questions to print")
    p.add_argument("--seed", type=int, default=0, help="seed of the data generator")
    args = p.parse_args()
    try:
        check_digits(args.digits)
    except ValueError as e:
        p.error(str(e))
    toks = random_batch(args.task, args.digits, args.n, torch.Generator().manual_seed(args.seed))
    for q, c in zip(decode(toks), complexity(toks, args.digits).tolist()):
        print(q, COMPLEXITY[c])
