"""
What every command line here shares: one-line errors, argparse types that refuse bad values in one line,
and opening a checkpoint with a one-line error. Used by train.py, analyse.py (report.py), reuse.py,
reuse_nodes.py and the coursework checker.

    p = Parser(prog="train.py")
    p.add_argument("--steps", type=positive(int))       # '0' or 'x': "train.py: error: argument --steps: ..."
    model, info, task = open_checkpoint(p, "checkpoints/add_d5_l2_h3_t6K_s1.pt")
"""
import argparse
import math
import sys

from model import CheckpointError, load_model


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad value in one line (no usage block) and exits with status 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def positive(kind):
    """An argparse type: a number of `kind` (int or float) greater than 0."""
    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not {'a whole' if kind is int else 'a'} number") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {s}")
        return v
    return parse


def bounded(low, high=math.inf):
    """An argparse type: a finite float from low to high."""
    def parse(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
        if not (math.isfinite(v) and low <= v <= high):
            span = f"from {low:g} to {high:g}" if math.isfinite(high) else f"a finite number of at least {low:g}"
            raise argparse.ArgumentTypeError(f"must be {span}, not {s}")
        return v
    return parse


def verify_count(s):
    """An argparse type: a positive number of questions, or 'all'."""
    if s == "all":
        return s
    try:
        int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a whole number or 'all'") from None
    return positive(int)(s)


def every_question_fits(p, flag, count, n_digits):
    """One line through parser p when `count` is 'all' (every question) for a model of more than 3 digits."""
    if count == "all" and n_digits > 3:
        p.error(f"{flag} all needs at most 3 digits (10^{2 * n_digits} questions per operation here)")


def open_checkpoint(p, path, task=None, device="cpu"):
    """Load a checkpoint for a command line: (model, info, task), or a one-line error through parser p.
    `task` is what the user asked for: required when the checkpoint does not say (TransformerLens files)."""
    try:
        model, info = load_model(path, device)
    except CheckpointError as e:
        p.error(str(e))
    found = info.get("task") or task
    if found is None:
        p.error(f"{path}: the checkpoint does not say its task: give --task add, sub or mix")
    if task and task != found:
        p.error(f"{path}: is {'an' if found == 'add' else 'a'} {found} model, not {task}")
    return model, info, found
