"""
The exercise command, run from the repository root:

    python -m coursework              # every exercise, one line each, and whether your stub solves it
    python -m coursework 3            # check exercise 3: PASS, or the first mismatch and a hint
    python -m coursework 3 5 7        # several; `all` checks every one
    python -m coursework --solutions  # every checker on the reference solutions (must all pass)
    python -m coursework --solutions 3  # one checker on its reference solution

Exit status: 0 when every exercise checked passes (the listing: always 0), 1 when one fails, 2 on bad input.
"""
import sys

import torch

import train
from coursework import checks, exercises, solutions

PROG = "python -m coursework"


def build_parser():
    p = train.Parser(prog=PROG, description="Check your solutions to the exercises of coursework/README.md "
                     "(the stubs in coursework/exercises.py) against the project's own code.",
                     epilog="With no exercise: list them all, one line each, with whether your stub solves it.")
    p.add_argument("exercise", nargs="*", metavar="N",
                   help=f"exercise numbers 1-{len(checks.EXERCISES)}, or `all`")
    p.add_argument("--solutions", action="store_true",
                   help="run the checkers on the reference solutions (coursework/solutions.py), not your stubs")
    return p


def chosen(p, words):
    """The exercise numbers named on the command line, in order, once each (`all`: every one)."""
    numbers = []
    for w in words:
        if w == "all":
            numbers += list(checks.EXERCISES)
        elif w.isdigit() and int(w) in checks.EXERCISES:
            numbers.append(int(w))
        else:
            p.error(f"no exercise {w!r}: give numbers 1-{len(checks.EXERCISES)} or all")
    return list(dict.fromkeys(numbers))


def function(i, reference=False):
    """Exercise i's function: the student's stub (read at call time) or the reference solution."""
    return getattr(solutions if reference else exercises, checks.EXERCISES[i][0])


def main(argv=None):
    p = build_parser()
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)  # tiny models: one thread is fastest
    listing = not args.exercise and not args.solutions
    todo = chosen(p, args.exercise or ["all"])
    failed = 0
    try:
        for i in todo:
            ok, message = checks.CHECKS[i](function(i, args.solutions))
            failed += not ok
            if listing:
                state = "solved" if ok else "not started" if message == checks.NOT_STARTED else "fails"
                print(f"{i:>2}  {state:<11}  {checks.EXERCISES[i][0]:<19} {checks.EXERCISES[i][1]}", flush=True)
            else:
                print(f"exercise {i}: {'PASS' if ok else 'FAIL'}: {message}", flush=True)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    if listing:
        print(f"{len(todo) - failed} of {len(todo)} solved. Edit coursework/exercises.py (see coursework/README.md), "
              f"then `{PROG} N` checks exercise N.")
        return 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
