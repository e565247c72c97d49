"""
Speed benchmarks and seed sweeps. Speed figures are printed as ratios against a reference measured in the
same run; a sweep trains one configuration with seeds 1..K and says how many verified.

    python bench.py                                   # speed: ~2 minutes on a 2-core CPU
    python bench.py --seeds 5 --task add --digits 5 --until-verified --clip 1   # a sweep (any train.py flags)

Speed: 1. time to a verified model: the default's steps x its measured step time, plus its million-question
check, against the paper preset's 15,000 steps x its step time plus its check (timed on 4,096 questions);
2. the million-question check of the model the default command made (every question scored), against 60 s;
3. training throughput: the step's FLOP/s as a share of this machine's float32 matmul rate;
4. the data generator's share of a step. FLOPs are counted from the shapes (matmuls only: 2 per
multiply-add; backward = 2x forward).
Sweep (--seeds K): per seed, the steps and wall time to the first check with zero errors (checks every 250
steps unless --check-every says otherwise), then errors on --questions fresh uniform questions per
operation (default 10^6, the papers' check), every named and sparse set and a tenth as many stress questions
per operation (evaluate.question_sets), and the loss curve's worst rise after
warm-up (loss_rise); "K of N seeds verified" counts seeds with zero errors there. `--device cuda` trains
and checks on a GPU. Each seed's result is appended to a JSON-lines file under --results the moment
it finishes, in a file named for the resolved settings (model, training, questions, device, threads); a
rerun of the same settings skips the seeds already there (a changed default starts a new file), and
`--first-seed S` leaves seeds below S to another process (two sweeps side by side, one per core); a
sweep's summary counts every seed on disk when it ends, those the other process finished included.
Left out on purpose: GPU speed figures (the targets are a laptop's) and timed assertions in tests.
"""
import glob
import hashlib
import json
import os
import statistics
import sys
import time

import torch

import data
import evaluate
import train
from cli import Parser, every_question_fits, verify_count
from model import Config, Transformer, load_model, pick_device


def matmul_rate(threads, n=1024, reps=20):
    """This machine's float32 matmul rate in FLOP/s, with `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def forward_flops(cfg: Config, batch, read=None):
    """Matmul FLOPs of one forward pass; `read` = positions whose logits are read (last block only).
    With `read` the model also drops the last position, which no read logit can see (model.forward)."""
    P, C, H, D, M, V = cfg.n_ctx - bool(read), cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab
    total = 0
    for i in range(cfg.n_layers):
        Q = read if (read and i == cfg.n_layers - 1) else P
        total += 2 * P * C * 3 * H * D + 2 * 2 * H * Q * P * D + 2 * Q * H * D * C + 2 * 2 * Q * C * M
    return batch * (total + 2 * (read or P) * C * V)


def step_time(cfg: Config, tc: train.TrainConfig, steps):
    """Seconds per training step (after a short warm-up) and the data generator's seconds per batch."""
    train.set_threads(cfg)
    model = Transformer(cfg, torch.Generator().manual_seed(0))
    warm = train.TrainConfig(**{**tc.__dict__, "steps": 5})
    train.train(model, warm, progress=False)
    timed = train.TrainConfig(**{**tc.__dict__, "steps": steps})
    t = time.perf_counter()
    train.train(model, timed, progress=False)
    per_step = (time.perf_counter() - t) / steps
    gen = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    for _ in range(50):
        data.random_batch(tc.task, tc.n_digits, tc.batch_size, gen, tc.perc_sub)
    return per_step, (time.perf_counter() - t) / 50


def check_time(cfg: Config, questions, sample=4096):
    """Seconds to score `questions` questions with a model of this shape, timed on `sample` of them."""
    train.set_threads(cfg)
    model = Transformer(cfg, torch.Generator().manual_seed(0)).eval()
    tokens = data.random_batch("add", cfg.n_digits, sample, torch.Generator().manual_seed(0))
    evaluate.score(model, tokens[:1024], cfg.n_digits, with_loss=False)  # warm-up
    t = time.perf_counter()
    evaluate.score(model, tokens, cfg.n_digits, with_loss=False)
    return (time.perf_counter() - t) * questions / sample


def configs(argv):
    args = train.build_parser().parse_args(argv)
    return train.resolve(args, train.build_parser())


def main(argv=None):
    p = Parser(prog="bench.py", allow_abbrev=False,  # a train.py flag must never pass for a prefix of ours
                                description="Benchmark training and verification speed against references; "
                                "with --seeds K, train seeds 1..K of a configuration (any train.py flags) and "
                                "count how many verify.")
    p.add_argument("--timed-steps", type=int, default=150,
                   help="speed: steps timed for the default model (default 150)")
    p.add_argument("--paper-steps", type=int, default=20,
                   help="speed: steps timed for the paper preset (default 20)")
    p.add_argument("--checkpoint", help="model for the 1M check (default: the shipped one the default command made)")
    p.add_argument("--questions", type=verify_count, default=1_000_000,
                   help="fresh uniform questions per operation in the verification check, or 'all' (every "
                   "question, n <= 3) (default 1000000)")
    p.add_argument("--seeds", type=int, default=0, help="sweep: train seeds 1..K instead (default 0: no sweep)")
    p.add_argument("--first-seed", type=int, default=1,
                   help="sweep: train only seeds FIRST..K (a second process can take the others; default 1)")
    p.add_argument("--results", default=os.path.join("runs", "bench"),
                   help="sweep: folder of the JSON-lines result files (default runs/bench)")
    args, rest = p.parse_known_args(argv)
    if args.seeds < 0:
        p.error(f"--seeds must be 0 (no sweep) or more, not {args.seeds}")
    if args.first_seed != 1 and not args.seeds:
        p.error("--first-seed goes with --seeds K (a sweep)")
    if args.seeds:
        if not 1 <= args.first_seed <= args.seeds:
            p.error(f"--first-seed {args.first_seed}: must be between 1 and --seeds ({args.seeds})")
        return sweep(args, rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)} (train.py flags go with --seeds)")
    if args.questions == "all":
        p.error("--questions all goes with --seeds K (a sweep of a model of at most 3 digits)")

    cores = torch.get_num_threads()
    peak = {t: matmul_rate(t) for t in sorted({1, cores})}

    def peak_now():  # the matmul rate at the thread count set_threads chose (OMP_NUM_THREADS may differ)
        threads = torch.get_num_threads()
        return peak.get(threads) or matmul_rate(threads)

    print("machine float32 matmul: " + ", ".join(f"{r / 1e9:.1f} GFLOP/s on {t} thread(s)" for t, r in peak.items()))

    rows = {}
    for label, argv in [("default", ["--task", "add", "--digits", "5"]), ("paper", ["--preset", "add_d5_l2_h3_t15K"])]:
        cfg, tc = configs(argv)
        per_step, gen = step_time(cfg, tc, args.timed_steps if label == "default" else args.paper_steps)
        threads = torch.get_num_threads()
        flops = 3 * forward_flops(cfg, tc.batch_size, tc.n_digits + 2)
        share = flops / per_step / peak_now()
        rows[label] = (cfg, tc, per_step)
        print(f"{label:>7}: {sum(p.numel() for p in Transformer(cfg).parameters()):>9,} params, batch {tc.batch_size}, "
              f"{threads} thread(s): {per_step * 1000:7.1f} ms/step, {flops / per_step / 1e9:5.1f} GFLOP/s = "
              f"{100 * share:4.0f}% of the matmul rate (target >= 50%); data generation {100 * gen / per_step:.1f}% of a step")

    est = {k: tc.steps * s for k, (cfg, tc, s) in rows.items()}
    print(f"time to a trained model: default {tc_str(rows['default'])} = {est['default'] / 60:.1f} min (target <= 5), "
          f"paper {tc_str(rows['paper'])} = {est['paper'] / 60:.0f} min; ratio {est['paper'] / est['default']:.0f}x (goal >= 30x)")

    made_by_default = os.path.join("checkpoints", train.run_name(rows["default"][1], rows["default"][0]) + ".pt")
    path = args.checkpoint or (made_by_default if os.path.exists(made_by_default) else
                               next(iter(sorted(glob.glob("checkpoints/add_d5_*.pt"))), None))
    if path:
        model, info = load_model(path)
        train.set_threads(model.cfg)
        t = time.perf_counter()
        results = evaluate.verify(model, "add", model.cfg.n_digits, args.questions, seed=info.get("seed", 0),
                                  progress=False, n_enriched=0, n_stress=0)  # as timed before the stress sets
        secs = time.perf_counter() - t
        errors = sum(r["questions"] - r["correct"] for r in results.values())
        rate = forward_flops(model.cfg, args.questions, model.cfg.n_digits + 2) / secs
        print(f"{args.questions:,}-question check of {path}: {secs:.1f}s = {secs / 60:.2f}x the 60 s target, "
              f"{errors} errors; {rate / 1e9:.1f} GFLOP/s = {100 * rate / peak_now():.0f}% of the matmul rate")

    check = {"default": secs * 1_000_000 / args.questions if path else
             check_time(rows["default"][0], 1_000_000),
             "paper": check_time(rows["paper"][0], 1_000_000)}
    total = {k: est[k] + check[k] for k in est}
    print(f"time to a verified model (training + 1,000,000-question check): default {est['default'] / 60:.1f} + "
          f"{check['default'] / 60:.1f} = {total['default'] / 60:.1f} min, paper {est['paper'] / 60:.0f} + "
          f"{check['paper'] / 60:.0f} = {total['paper'] / 60:.0f} min (its check timed on 4,096 questions); "
          f"ratio {total['paper'] / total['default']:.0f}x (goal >= 30x)")



def loss_rise(loss, skip, window=20):
    """The loss curve's worst rise after `skip` steps (the warm-up): the `window`-step running mean over its
    own running minimum. 20 steps is the `_loss.png`'s smoothing at 2,000 steps (it averages 1% of the
    steps), so at 4,000 a one-step spike reads about twice as high here as on the figure: the stricter
    measure. loss: per-step losses (list or (steps,) tensor).
    Returns (largest ratio, steps where it was above 10x); (1.0, 0) for a run too short to tell."""
    if len(loss) < window + skip:
        return 1.0, 0
    mean = torch.tensor(loss, dtype=torch.float64).unfold(0, window, 1).mean(1)[skip:]  # (steps - window + 1 - skip,)
    rise = mean / torch.cummin(mean, 0).values
    return round(rise.max().item(), 1), int((rise > 10).sum())


def sweep(args, rest):
    """Train seeds first_seed..seeds with the train.py flags in `rest`; one JSON line per seed, as it finishes.
    The summary counts seeds 1..seeds from the results file and names those not finished yet."""
    p = train.build_parser()
    p.prog = "bench.py"
    if train.build_parser().parse_args(rest).seed is not None:
        p.error("--seeds K trains seeds 1..K (--first-seed S: only S..K): drop --seed")
    if "--check-every" not in rest:
        rest = [*rest, "--check-every", "250"]
    flags = p.parse_args(rest)
    cfg, tc = train.resolve(flags, p)
    every_question_fits(p, "--questions", args.questions, tc.n_digits)
    try:
        device = pick_device(flags.device)
    except ValueError as e:
        p.error(str(e))
    train.set_threads(cfg)  # the thread count changes the order of sums, so it is part of the run
    # The file is named for the resolved settings, not the flags: a rerun after a default changed starts afresh,
    # as does one on a CPU of another instruction set (it sums in another order: another run for the same seed).
    run = dict(model=vars(cfg), train={k: v for k, v in vars(tc).items() if k != "seed"}, questions=args.questions,
               device=str(device), threads=torch.get_num_threads(), cpu=torch.backends.cpu.get_cpu_capability(),
               stress=True)  # the final check has the stress sets: sweeps from before them are other files
    key = hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode()).hexdigest()[:10]
    os.makedirs(args.results, exist_ok=True)
    path = os.path.join(args.results, f"{tc.task}_d{tc.n_digits}_{key}.jsonl")
    def done():  # {seed: result} of the runs with these settings on disk, those of processes beside this one too
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return {r["seed"]: r for r in map(json.loads, f)}
    rows = done()
    trained = set()  # seeds this process trains; the others are read from the file
    print(f"results: {path} ({len(rows)} seed(s) done before); flags: {' '.join(rest)}")
    for seed in range(1, args.seeds + 1):
        rows = {**done(), **rows}  # a process beside this one may have finished this seed meanwhile
        if seed < args.first_seed and seed not in rows:
            print(f"seed {seed}: not finished (left to another process: --first-seed {args.first_seed})")
            continue
        if seed not in rows:
            cfg, tc = train.resolve(p.parse_args([*rest, "--seed", str(seed)]), p)  # threads: set once above
            model = Transformer(cfg, torch.Generator().manual_seed(seed)).to(device)
            hist = train.train(model, tc, device, progress=False)
            if hist["interrupted"]:
                print(f"seed {seed}: interrupted after {hist['steps_done']} steps, not recorded")
                return 130
            t = time.perf_counter()
            res = evaluate.verify(model, tc.task, tc.n_digits, args.questions, seed=seed, progress=False, n_enriched=0)
            first = next((c for c in hist["checks"] if c["step"] == hist["verified_step"]), None)
            trained.add(seed)
            rows[seed] = dict(seed=seed, flags=rest, cpu=torch.backends.cpu.get_cpu_capability(),
                              threads=torch.get_num_threads(), steps=hist["steps_done"], train_seconds=round(hist["seconds"], 1),
                              verified_step=hist["verified_step"], seconds_to_verified=first and first["seconds"],
                              check_seconds=round(time.perf_counter() - t, 1), questions=args.questions,
                              final_loss=hist["loss"][-1], errors=evaluate.errors(res),
                              loss_rise=loss_rise(hist["loss"], int(tc.steps * tc.warmup)),
                              failures=sorted({f for r in res.values() for f in r["failures"]})[:6])
            with open(path, "a") as f:  # one line per finished seed, on disk before the next starts
                f.write(json.dumps(rows[seed]) + "\n")
                f.flush()
                os.fsync(f.fileno())
        r = rows[seed]
        wrong = {k: v for k, v in r["errors"].items() if v}
        to = (f"first zero-error check at step {r['verified_step']:,} ({r['seconds_to_verified']:.0f} s)"
              if r["verified_step"] else f"no zero-error check in {r['steps']:,} steps")
        rise = (f"; loss rose up to {r['loss_rise'][0]}x above its running minimum after warm-up "
                f"({r['loss_rise'][1]} steps above 10x)") if "loss_rise" in r else ""
        print(f"seed {seed}{' (from the results file)' * (seed not in trained)}: {to}; trained {r['steps']:,} steps "
              f"in {r['train_seconds']:.0f} s{rise}; "
              f"{count(r['questions'])} per operation + named sets: "
              + (f"errors {wrong}, e.g. {'; '.join(r['failures'][:3])}" if wrong else "no errors"))
    rows = {**done(), **rows}  # seeds that another process finished meanwhile count in the summary
    ok = [r for s, r in rows.items() if s <= args.seeds and not any(r["errors"].values())]
    times = sorted(r["seconds_to_verified"] for s, r in rows.items() if s <= args.seeds and r["verified_step"])
    missing = [s for s in range(1, args.seeds + 1) if s not in rows]
    print(f"{len(ok)} of {args.seeds} seeds verified ({count(args.questions)} per operation "
          f"and every named set)" + (f"; not finished: seed {', '.join(map(str, missing))}" if missing else "")
          + (f"; median time to the first zero-error check {statistics.median(times):.0f} s" if times else ""))
    return 0


def count(questions):
    """How a sweep's check is named: '1,000,000 uniform questions' or 'every question' (--questions all)."""
    return "every question" if questions == "all" else f"{questions:,} uniform questions"


def tc_str(row):
    cfg, tc, per_step = row
    return f"{tc.steps:,} steps x {per_step * 1000:.0f} ms"


if __name__ == "__main__":
    sys.exit(main())
