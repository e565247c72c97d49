"""
Speed benchmarks (issue 3): each figure is printed as a ratio against a reference measured in the same run.

    python bench.py                                   # ~2 minutes on a 2-core CPU
    python bench.py --seeds 5                         # also train + verify the default 5 times (~20 min)

1. time to a verified model: the default's steps x its measured step time, plus its million-question
   check, against the paper preset's 15,000 steps x its step time plus its check (timed on 4,096
   questions); with --seeds K, real runs: training time and errors in 10^6 + every named set each;
2. the million-question check of the model the default command made (every question scored), against 60 s;
3. training throughput: the step's FLOP/s as a share of this machine's float32 matmul rate;
4. the data generator's share of a step.
FLOPs are counted from the shapes (matmuls only: 2 per multiply-add; backward = 2x forward).
Left out on purpose: GPU timings (no GPU was lent to this project) and timed assertions in tests.
"""
import argparse
import glob
import os
import time

import torch

import data
import evaluate
import train
from model import Config, Transformer, load_model


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


def main():
    p = argparse.ArgumentParser(description="Benchmark training and verification speed against references.")
    p.add_argument("--steps", type=int, default=150, help="steps timed for the default model")
    p.add_argument("--paper-steps", type=int, default=20, help="steps timed for the paper preset")
    p.add_argument("--checkpoint", help="model for the 1M check (default: the shipped one the default command made)")
    p.add_argument("--questions", type=int, default=1_000_000, help="questions in the verification check")
    p.add_argument("--seeds", type=int, default=0, help="also train and verify the default with this many seeds")
    args = p.parse_args()

    cores = torch.get_num_threads()
    peak = {t: matmul_rate(t) for t in sorted({1, cores})}

    def peak_now():  # the matmul rate at the thread count set_threads chose (OMP_NUM_THREADS may differ)
        threads = torch.get_num_threads()
        return peak.get(threads) or matmul_rate(threads)

    print(f"machine float32 matmul: " + ", ".join(f"{r / 1e9:.1f} GFLOP/s on {t} thread(s)" for t, r in peak.items()))

    rows = {}
    for label, argv in [("default", ["--task", "add", "--digits", "5"]), ("paper", ["--preset", "add_d5_l2_h3_t15K"])]:
        cfg, tc = configs(argv)
        per_step, gen = step_time(cfg, tc, args.steps if label == "default" else args.paper_steps)
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
        results = evaluate.verify(model, "add", model.cfg.n_digits, args.questions, seed=info.get("seed", 0), progress=False)
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

    verified = 0
    for seed in range(1, args.seeds + 1):
        cfg, tc = configs(["--task", "add", "--digits", "5", "--seed", str(seed)])
        train.set_threads(cfg)
        model = Transformer(cfg, torch.Generator().manual_seed(seed))
        hist = train.train(model, tc, progress=False)
        results = evaluate.verify(model, "add", 5, 1_000_000, seed=seed, progress=False)
        errors = {k: r["questions"] - r["correct"] for k, r in results.items() if r["correct"] < r["questions"]}
        wrong = sorted({f for r in results.values() for f in r["failures"]})[:4]
        verified += not errors
        print(f"seed {seed}: trained in {hist['seconds'] / 60:.1f} min, final loss {hist['loss'][-1]:.2e}, "
              f"errors: {errors or 'none in 1,000,000 and every named set'}"
              + (f", e.g. {'; '.join(wrong)}" if wrong else ""))
    if args.seeds:
        print(f"{verified} of {args.seeds} seeds verified (target: at least 4 of 5)")


def tc_str(row):
    cfg, tc, per_step = row
    return f"{tc.steps:,} steps x {per_step * 1000:.0f} ms"


if __name__ == "__main__":
    main()
