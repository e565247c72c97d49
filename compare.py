"""
The reuse comparison's records and report: does a grown model (a verified adder inserted, reuse.py) reach
zero errors on addition and subtraction sooner, and more often, than the same architecture from scratch?

    python reuse.py --compare --from <a verified 6-digit adder> --seeds 5 --until-verified

reuse.py trains the runs; this file keeps them and reports them. Each finished run is one JSON line in
<folder>/results.jsonl, written the moment it finishes, with the settings it was made with, so that the
same command run again skips it and a folder never mixes settings. The report (compare.md, compare.json,
compare.png) covers every finished run in the folder: per seed and arm, the steps and minutes to the first
check with zero errors, the errors of the final check (fresh uniform and enriched questions per operation,
every named, sparse and stress set) and the final loss; per arm, the seeds verified and the median steps to
verified; a plot of the errors at each check. Left out on purpose: significance tests (5 seeds per arm
cannot carry them).
"""
import json
import os
import statistics

from matplotlib import rcParams
from matplotlib.figure import Figure

import evaluate

RESULTS = "results.jsonl"


def parse_arms(text, seeds, known) -> dict:
    """'init,scratch,freeze-all:3' -> {"init": seeds, "scratch": seeds, "freeze-all": 3}, in that order.
    Raises ValueError (one line) for an unknown arm or a seed count that is not a positive integer."""
    arms = {}
    for item in (s.strip() for s in text.split(",")):
        arm, _, n = item.partition(":")
        if arm not in known:
            raise ValueError(f"unknown arm {arm!r} in --arms (choose from {', '.join(known)})")
        if n and not (n.isdigit() and int(n) > 0):
            raise ValueError(f"--arms {item!r}: the seed count must be a positive integer")
        arms[arm] = int(n) if n else seeds
    return arms


def differences(old: dict, new: dict, prefix="") -> list:
    """The keys whose values differ between two settings dicts; nested keys as "train.lr"."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(prefix + k)
    return out


def load_results(folder, settings) -> dict:
    """{(arm, seed): row} of the finished runs recorded in folder/results.jsonl ({} when there is none).
    A line cut short (the machine stopped while writing it) is skipped: that run is trained again.
    Raises ValueError (one line) when the folder holds runs made with other settings."""
    path = os.path.join(folder, RESULTS)
    done = {}
    if not os.path.isfile(path):
        return done
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row["settings"] != settings:
                diff = differences(row["settings"], settings)
                raise ValueError(f"{path} holds runs made with other settings ({', '.join(diff)} differ): "
                                 "use the same settings, or another --out")
            done[(row["arm"], row["seed"])] = row
    return done


def plan(folder, settings, arms, seeds, known):
    """(folder, settings as results.jsonl gives them back, {arm: seeds} from `parse_arms`, the finished runs
    {(arm, seed): row} from `load_results`). Raises ValueError (one line) as those two do."""
    settings = json.loads(json.dumps(settings))  # tuples become lists, as they come back from the file
    return folder, settings, parse_arms(arms, seeds, known), load_results(folder, settings)


def run_all(folder, settings, arms, first_seed, done, train_one, order) -> list:
    """Train what `done` lacks, seed by seed (first_seed, first_seed + 1, ...), each arm for its number of
    seeds: train_one(arm, seed) -> (name, history, results, adder; results None when Ctrl-C stopped it,
    which stops here too with KeyboardInterrupt). Each finished run is recorded at once (`record`).
    Returns every finished run's row, ordered by arm (as in `order`) and seed."""
    for seed in range(first_seed, first_seed + max(arms.values())):
        for arm, n_seeds in arms.items():
            if seed >= first_seed + n_seeds or (arm, seed) in done:
                continue
            print(f"--- {arm}, seed {seed}")
            name, history, results, adder = train_one(arm, seed)
            if results is None:
                raise KeyboardInterrupt
            done[(arm, seed)] = record(folder, settings, arm, seed, name, history, results, adder)
    return sorted(done.values(), key=lambda r: (order.index(r["arm"]), r["seed"]))


def record(folder, settings, arm, seed, name, history, results, adder=None) -> dict:
    """Append one finished run to folder/results.jsonl (flushed and synced before returning); returns its row.
    history: train.train's (loss, checks, verified_step, seconds, steps_done); results: evaluate.verify's."""
    checks = history["checks"]
    step = history["verified_step"]
    seconds = next((c["seconds"] for c in checks if c["step"] == step), None)
    final = history["loss"][-5:] or [float("nan")]
    row = dict(arm=arm, seed=seed, name=name, steps_done=history["steps_done"], seconds=history["seconds"],
               verified_step=step, verified_seconds=seconds, final_loss=sum(final) / len(final),
               errors=evaluate.errors(results), questions={k: r["questions"] for k, r in results.items()},
               checks=checks, adder=adder)
    with open(os.path.join(folder, RESULTS), "a") as f:
        f.write(json.dumps(dict(row, settings=settings)) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return row


def split_errors(row):
    """Errors at the end: (fresh uniform additions, fresh uniform subtractions, fresh enriched questions of
    both operations, the named, sparse and stress sets)."""
    e = row["errors"]
    return (e.get("add uniform", 0), e.get("sub uniform", 0), sum(v for k, v in e.items() if k.endswith("enriched")),
            sum(v for k, v in e.items() if not k.endswith(evaluate.FRESH)))


def best_grown(rows):
    """The grown run with the fewest errors at the end, then the soonest verified; None without grown runs."""
    grown = [r for r in rows if r["arm"] != "scratch"]
    key = lambda r: (sum(split_errors(r)), r["verified_step"] or float("inf"), r["seed"])  # noqa: E731
    return min(grown, key=key) if grown else None


def per_100k(row, op):
    """Errors per 100,000 fresh uniform questions of `op` (add or sub) at the end of a run."""
    return 1e5 * row["errors"].get(f"{op} uniform", 0) / max(1, row["questions"].get(f"{op} uniform", 0))


def median_or_never(values):
    """The median of `values` in which None means "never" (counted as infinite); None when it is never."""
    m = statistics.median([float("inf") if v is None else v for v in values])
    return None if m == float("inf") else m


def summarise(rows) -> dict:
    """Per arm: seeds, how many reached a zero-error check, how many have zero errors at the end, and the
    median steps and minutes to the first zero-error check, counting a seed that never got there as
    infinite (so the median is None, "not within the budget", when half the seeds or more never did)."""
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        rs = [r for r in rows if r["arm"] == arm]
        out[arm] = dict(seeds=len(rs), verified=sum(r["verified_step"] is not None for r in rs),
                        clean_at_end=sum(sum(split_errors(r)) == 0 for r in rs),
                        median_steps=median_or_never([r["verified_step"] for r in rs]),
                        median_minutes=median_or_never([r["verified_seconds"] and r["verified_seconds"] / 60
                                                        for r in rs]),
                        **{f"median_{op}_per_100k": statistics.median(per_100k(r, op) for r in rs) for op in ("add", "sub")})
    return out


def markdown(settings, rows, summary, usage=None) -> str:
    """The report's text: the settings, a row per run, a row per arm and the node usage."""
    t, c, n = settings["train"], settings["config"], settings["verify"]
    never = "not within the budget"
    lines = [f"Grown from `{settings['source']['file']}` (sha256 {settings['source']['sha256']}) into "
             f"{c['n_layers']} layers x {c['n_heads']} heads, against the same architecture from scratch: the same "
             f"data for a seed ({t['perc_sub']:g}% subtraction), lr {t['lr']:g}, batch {t['batch_size']}, budget "
             f"{t['steps']:,} steps{', stopped at the first zero-error check' if t['until_verified'] else ''}. "
             f"Checked every {t['check_every']} steps on {t['check_questions']:,} fresh uniform and as many enriched "
             f"questions per operation, the named and sparse sets; at the end on {n:,} fresh uniform (add errors, "
             f"sub errors) and {n // 10:,} enriched and as many stress questions per operation (runs since the stress "
             f"sets existed), every named set and every sparse one "
             f"(a run with no zero-error check cannot be verified: it is checked on {n // 10:,} uniform and "
             f"{n // 100:,} enriched questions per operation, marked *).",
             "",
             "| arm | seed | steps to 0 errors | minutes | add errors | sub errors | enriched errors "
             "| named + sparse errors | final loss |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        add, sub, enriched, named = split_errors(r)
        v, s = r["verified_step"], r["verified_seconds"]
        steps, minutes = (never, "-") if v is None else (f"{v:,}", f"{s / 60:.1f}")
        star = "*" if r["questions"].get("add uniform", n) < n else ""
        lines.append(f"| {r['arm']} | {r['seed']} | {steps} | {minutes} | {add:,}{star} | {sub:,}{star} | {enriched:,}{star} "
                     f"| {named:,} | {r['final_loss']:.3g} |")
    lines += ["", "| arm | seeds with a zero-error check | seeds with 0 errors at the end | median steps to 0 errors "
              "| median minutes | median add / sub errors per 100,000 at the end |", "|---|---|---|---|---|---|"]
    for arm, s in summary.items():
        steps = never if s["median_steps"] is None else f"{s['median_steps']:,.0f}"
        minutes = "-" if s["median_minutes"] is None else f"{s['median_minutes']:.1f}"
        lines.append(f"| {arm} | {s['verified']} of {s['seeds']} | {s['clean_at_end']} of {s['seeds']} | {steps} "
                     f"| {minutes} | {s['median_add_per_100k']:,.0f} / {s['median_sub_per_100k']:,.0f} |")
    if usage:
        lines += ["", f"Inserted nodes that `{usage['run']}` (the best grown run) still uses, by mean ablation "
                  "(share of correctly answered questions that one node's ablation breaks):", "", "```",
                  usage["table"], "```"]
    return "\n".join(lines) + "\n"


def plot_errors(rows, title=""):
    """Errors at each check (all sets together, symmetric log scale so 0 shows) against steps: one line per
    seed, one colour per arm. Returns a matplotlib Figure."""
    fig = Figure(figsize=(8, 4.5))  # not through pyplot: nothing to close, no display needed
    ax = fig.subplots()
    colors = dict(zip(dict.fromkeys(r["arm"] for r in rows), rcParams["axes.prop_cycle"].by_key()["color"]))
    for arm, color in colors.items():
        for j, r in enumerate(x for x in rows if x["arm"] == arm):
            steps = [c["step"] for c in r["checks"]]
            errs = [sum(c["errors"].values()) for c in r["checks"]]
            ax.plot(steps, errs, color=color, lw=1, alpha=0.8, marker=".", label=arm if j == 0 else None)
    ax.set_yscale("symlog", linthresh=1)
    ax.set(xlabel="step", ylabel="errors at the check (all sets)", title=title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def write_report(folder, settings, rows, usage=None) -> str:
    """Write folder/compare.md, compare.json and compare.png for `rows`; print the markdown; return the .md path."""
    summary = summarise(rows)
    text = markdown(settings, rows, summary, usage)
    with open(os.path.join(folder, "compare.md"), "w") as f:
        f.write(text + "\n![errors at each check](compare.png)\n")
    with open(os.path.join(folder, "compare.json"), "w") as f:
        json.dump(dict(settings=settings, runs=rows, arms=summary, node_usage=usage), f, indent=1)
    fig = plot_errors(rows, f"errors at each check: {', '.join(summary)}")
    fig.savefig(os.path.join(folder, "compare.png"), dpi=110)
    print(text)
    return os.path.join(folder, "compare.md")
