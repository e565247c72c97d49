"""
Train a transformer to add and/or subtract n-digit integers, save it, and check it on fresh questions.

    python train.py --task add --digits 5                      # the fast default: minutes on a laptop CPU
    python train.py --preset add_d6_l2_h3_t15K                 # a paper configuration (GPU recommended)
    python train.py --verify 1000000 --checkpoint checkpoints/add_d5_l2_h3_t6K_s1.pt   # check, no training

Writes <out>/<name>.pt (weights + config), <name>.json (config, losses overall and per answer
position, the accuracy report) and <name>_loss.png. The loop follows the papers' Math notebooks:
fresh random batches every step (with enrichment), AdamW, 20% linear warm-up from 1% then cosine to 0,
and the loss is the mean NLL over the answer tokens only, computed in float64. Ctrl-C stops cleanly
and saves what was trained. The evaluation (`score`, `verify`, `report`) lives here too, for
analyse.py and reuse.py. Left out on purpose: gradient clipping and dropout (the papers use neither),
validation splits (every batch is fresh), and multiplication.
"""
import argparse
import ctypes
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

import data
from model import CheckpointError, Config, Transformer, load_model, pick_device, save_model

# ----------------------------------------------------------------------------- configurations

# The papers' models (SPEC 2.7): d_model 510, d_head 170, batch 64, lr 8e-5, weight decay 0.1, seed 372001.
PAPER = dict(d_model=510, d_head=170, d_mlp=2040, batch_size=64, lr=8e-5, weight_decay=0.1, seed=372001)
PRESETS = {
    "add_d5_l2_h3_t15K": dict(task="add", digits=5, layers=2, heads=3, steps=15_000, perc_sub=0),
    "add_d6_l2_h3_t15K": dict(task="add", digits=6, layers=2, heads=3, steps=15_000, perc_sub=0),
    "sub_d6_l2_h3_t30K": dict(task="sub", digits=6, layers=2, heads=3, steps=30_000, perc_sub=100),
    "mix_d6_l3_h4_t40K": dict(task="mix", digits=6, layers=3, heads=4, steps=40_000, perc_sub=66),
    "ins1_mix_d6_l3_h4_t40K": dict(task="mix", digits=6, layers=3, heads=4, steps=40_000, perc_sub=80, insert="init"),
    "ins2_mix_d6_l4_h4_t40K": dict(task="mix", digits=6, layers=4, heads=4, steps=40_000, perc_sub=80, insert="freeze-useful"),
    "ins3_mix_d6_l4_h3_t40K": dict(task="mix", digits=6, layers=4, heads=3, steps=40_000, perc_sub=80, insert="freeze-all"),
    "ins3_mix_d6_l4_h3_t60K": dict(task="mix", digits=6, layers=4, heads=3, steps=60_000, perc_sub=80, insert="freeze-all"),
}
for _p in PRESETS.values():
    _p.update(PAPER)

# The fast default for a laptop CPU (issue 3): a model ~1/65 the paper's size, a large learning rate
# and a larger batch reach zero errors on a million questions in a few minutes on 2 cores. Measured over
# seeds 1-5 (README "Speed"): 4,000 steps verified 2 of 5, and 5,000 or 6,000 steps still failed seed 2 on
# short operands (00055+00045); with 10% short operands (data.shorten) 5,000 steps verified 4 of 5, 6,000 5 of 5.
FAST = dict(layers=2, heads=3, d_model=64, d_head=16, d_mlp=256, batch_size=256, lr=3e-3,
            weight_decay=0.1, seed=1, p_short=0.1)
FAST_STEPS = {"add": 6000, "sub": 8000, "mix": 12000}  # per task; one more digit needs ~25% more


@dataclass
class TrainConfig:
    task: str = "add"          # add, sub or mix
    n_digits: int = 5
    steps: int = 4000
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.1
    perc_sub: float = 50       # mix only: % of batches that are subtraction
    warmup: float = 0.2        # share of steps spent warming up linearly from 1% of lr
    seed: int = 1
    enrichment: bool = True
    p_short: float = 0.0       # share of questions with short operands (data.shorten); the papers: 0

# ----------------------------------------------------------------------------- loss and schedule


def answer_nll(logits, tokens, n_digits):
    """Per-question, per-answer-token NLL (B, n+2) in float64. `logits` holds all positions (B, P, V)
    or only the n+2 answer-predicting ones (B, n+2, V)."""
    if logits.shape[1] != n_digits + 2:
        logits = logits[:, data.logit_slice(n_digits)]
    logp = logits.double().log_softmax(-1)  # float64, as the papers do: losses go down to 1e-9
    return -logp.gather(-1, tokens[:, data.answer_slice(n_digits), None])[..., 0]


def lr_factor(step, steps, warmup=0.2):
    """Linear warm-up from 1% to 100% over warmup*steps, then cosine to 0 (the Math notebooks)."""
    w = int(steps * warmup)
    if step < w:
        return 0.01 + 0.99 * step / w
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, steps - w)))


def set_threads(cfg: Config):
    """Tune the CPU for a model of this size.
    Threads: measured on an idle 2-core CPU, a second thread makes a training step of the default
    (d_model 64) model 1.3x faster (96 -> 72 ms) and of the paper's d_model-510 model 1.8x faster
    (1150 -> 630 ms), so models of d_model >= 48 use every core. Tiny models (the tests' d_model 16-32)
    spend their time in per-operation overhead that threads do not shorten: they run on one thread.
    Set OMP_NUM_THREADS to override (e.g. 1 when several runs share the machine).
    Memory: glibc hands large freed buffers back to the OS and page-faults them in again on the next
    step; raising its mmap/trim thresholds keeps them (measured ~30% faster inference on 2 cores)."""
    chosen = 1 if cfg.d_model < 48 else (os.cpu_count() or 1)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or chosen))  # the user's setting wins
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD: buffers up to 32 MB come from the heap
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MB of freed heap
    except (OSError, AttributeError):  # not glibc (macOS, Windows): nothing to tune
        pass

# ----------------------------------------------------------------------------- training loop


def train(model: Transformer, tc: TrainConfig, device="cpu", after_backward=None, after_step=None,
          progress=True):
    """Train in place. Returns a history dict: 'loss' (steps,) and 'per_position' (steps, n+2) as lists,
    plus 'seconds' and 'interrupted'. `after_backward(model)` may edit gradients and `after_step(model)`
    weights (reuse.py freezes slices this way). Ctrl-C ends the loop early and keeps what was trained."""
    gen = torch.Generator().manual_seed(tc.seed + 1)  # data; the init generator is seeded with tc.seed
    # fused: one kernel for all parameters instead of ~10 per tensor (profiled: 5.6 -> 1.4 ms of a CPU step)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(0.9, 0.98), eps=1e-8,
                            weight_decay=tc.weight_decay, fused=torch.device(device).type in ("cpu", "cuda"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, tc.steps, tc.warmup))
    losses = torch.zeros(tc.steps, tc.n_digits + 2, dtype=torch.float64, device=device)
    read = data.logit_slice(tc.n_digits)
    model.train()
    bar = tqdm(range(tc.steps), desc=f"train {tc.task} d{tc.n_digits}", disable=not progress, mininterval=0.5)
    done, t0, interrupted = 0, time.time(), False
    try:
        for step in bar:
            tokens = data.random_batch(tc.task, tc.n_digits, tc.batch_size, gen, tc.perc_sub,
                                       tc.enrichment, device, tc.p_short)
            logits = model(tokens, read)  # (B, n+2, V): the loss reads only the answer positions
            per_pos = answer_nll(logits, tokens, tc.n_digits).mean(0)  # (n+2,)
            loss = per_pos.mean()
            loss.backward()
            if after_backward:
                after_backward(model)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            if after_step:
                after_step(model)
            losses[step] = per_pos.detach()
            done = step + 1
            if step % 100 == 0 or done == tc.steps:
                bar.set_postfix(loss=f"{loss.item():.2e}")
    except KeyboardInterrupt:
        interrupted = True
        print(f"\ninterrupted at step {done}: saving what was trained", file=sys.stderr)
    model.eval()
    per_pos = losses[:done].float().cpu()
    return {"loss": per_pos.mean(1).tolist(), "per_position": per_pos.tolist(),
            "seconds": time.time() - t0, "interrupted": interrupted, "steps_done": done}

# ----------------------------------------------------------------------------- evaluation


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


# ----------------------------------------------------------------------------- artefacts


def run_name(tc: TrainConfig, cfg: Config, prefix=""):
    """Named like the papers' successor: add_d5_l2_h3_t15K_s372001."""
    return f"{prefix}{tc.task}_d{cfg.n_digits}_l{cfg.n_layers}_h{cfg.n_heads}_t{tc.steps / 1000:g}K_s{tc.seed}"


def plot_losses(history, n_digits, title=""):
    """Overall loss and one curve per answer token, log scale, smoothed over ~1% of the steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    per_pos = torch.tensor(history["per_position"]).clamp_min(1e-12)  # (steps, n+2)
    k = max(1, len(per_pos) // 100)
    smooth = per_pos.unfold(0, k, 1).mean(-1) if len(per_pos) >= k else per_pos  # (steps-k+1, n+2)
    x = torch.arange(len(smooth)) + k
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    ax1.plot(x, smooth.mean(1), color="black")
    ax1.set(yscale="log", xlabel="step", ylabel="answer loss (NLL)", title=f"{title} loss")
    names = ["sign"] + [f"A{n_digits - i}" for i in range(n_digits + 1)]
    colors = plt.cm.viridis(torch.linspace(0, 0.95, n_digits + 2).numpy())
    for i, name in enumerate(names):
        ax2.plot(x, smooth[:, i], label=name, color=colors[i], lw=1.2)
    ax2.set(yscale="log", xlabel="step", title="loss per answer token: digits are learned one by one")
    ax2.legend(ncol=2, fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def write_outputs(out, name, model, tc: TrainConfig, history, results=None, **extra):
    """The checkpoint, its .json and its _loss.png, all named `name` in folder `out`."""
    os.makedirs(out, exist_ok=True)
    final = history["loss"][-5:] or [float("nan")]
    info = dict(task=tc.task, seed=tc.seed, steps=history["steps_done"], final_loss=final[-1],
                avg_final_loss=sum(final) / len(final), train=asdict(tc), **extra)
    save_model(os.path.join(out, name + ".pt"), model, **info)
    k = max(1, len(history["loss"]) // 2000)  # keep the .json small: at most ~2000 points per curve
    js = dict(info, name=name, config=asdict(model.cfg), seconds=history["seconds"],
              interrupted=history["interrupted"], loss_every=k,
              loss=[round(v, 10) for v in history["loss"][::k]],
              per_position=[[round(v, 10) for v in row] for row in history["per_position"][::k]],
              verify=results)
    tmp = os.path.join(out, name + ".json.tmp")
    with open(tmp, "w") as f:
        json.dump(js, f, indent=1)
    os.replace(tmp, os.path.join(out, name + ".json"))
    fig = plot_losses(history, model.cfg.n_digits, name)
    fig.savefig(os.path.join(out, name + "_loss.png"), dpi=110)
    return os.path.join(out, name + ".pt")

# ----------------------------------------------------------------------------- command line


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad value in one line (no usage block) and exits with status 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def positive(kind):
    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a {kind.__name__}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {s}")
        return v
    return parse


def verify_count(s):
    return "all" if s == "all" else positive(int)(s)


def build_parser():
    p = Parser(prog="train.py", description="Train a transformer on n-digit addition/subtraction, then verify it.")
    p.add_argument("--task", choices=["add", "sub", "mix"], help="operation to learn (default add)")
    p.add_argument("--digits", type=int, help=f"digits per operand, 1 to {data.MAX_DIGITS} (default 5)")
    p.add_argument("--layers", type=positive(int), help="transformer blocks (default 2)")
    p.add_argument("--heads", type=positive(int), help="attention heads per block (default 3)")
    p.add_argument("--d-model", type=positive(int), help="residual stream width (default 64; paper 510)")
    p.add_argument("--d-head", type=positive(int), help="width of each head (default 16; paper 170)")
    p.add_argument("--d-mlp", type=positive(int), help="MLP hidden width (default 4*d_model)")
    p.add_argument("--steps", type=positive(int), help="training steps (default: 6000 add, 8000 sub, 12000 mix)")
    p.add_argument("--batch-size", type=positive(int), help="questions per step (default 256; paper 64)")
    p.add_argument("--lr", type=positive(float), help="peak learning rate (default 3e-3; paper 8e-5)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.1)")
    p.add_argument("--perc-sub", type=float, help="mix: %% of batches that are subtraction (default 50)")
    p.add_argument("--short-operands", dest="p_short", type=float,
                   help="share of questions whose top digits are zeroed, 0 to 1 (default 0.1; paper 0)")
    p.add_argument("--seed", type=int, help="seed for initialisation and data (default 1)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or mps")
    p.add_argument("--out", default="checkpoints", help="folder for the .pt, .json and _loss.png")
    p.add_argument("--preset", help="a paper configuration: " + ", ".join(PRESETS))
    p.add_argument("--verify", type=verify_count, default=100_000,
                   help="fresh questions to check per operation after training, or 'all' (n <= 3)")
    p.add_argument("--checkpoint", help="with --verify: check this checkpoint instead of training")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def resolve(args, p):
    """Merge preset or fast defaults with explicit flags into (Config, TrainConfig); one-line errors."""
    if args.preset:
        if args.preset not in PRESETS:
            p.error(f"unknown preset {args.preset!r} (choose from {', '.join(PRESETS)})")
        base = dict(PRESETS[args.preset])
        if "insert" in base:
            p.error(f"preset {args.preset} grows an addition model: run it with reuse.py")
    else:
        task = args.task or "add"
        base = dict(FAST, task=task, digits=5, perc_sub=50)
        base["steps"] = FAST_STEPS[task]
    explicit = {k: v for k, v in vars(args).items() if v is not None and k in
                ("task", "digits", "layers", "heads", "d_model", "d_head", "d_mlp", "steps", "batch_size",
                 "lr", "weight_decay", "perc_sub", "seed", "p_short")}
    b = {**base, **explicit}
    if not args.preset and "steps" not in explicit and b["digits"] > 5:  # more digits, more steps
        b["steps"] = int(FAST_STEPS[b["task"]] * 1.25 ** (b["digits"] - 5))
    if not 1 <= b["digits"] <= data.MAX_DIGITS:
        p.error(f"--digits must be from 1 to {data.MAX_DIGITS}, not {b['digits']}")
    if not 0 <= b["perc_sub"] <= 100:
        p.error(f"--perc-sub must be from 0 to 100, not {b['perc_sub']}")
    if not 0 <= b.get("p_short", 0) <= 1:
        p.error(f"--short-operands must be from 0 to 1, not {b['p_short']}")
    if b["weight_decay"] < 0:
        p.error("--weight-decay must not be negative")
    d_mlp = b.get("d_mlp") or 4 * b["d_model"]
    cfg = Config(n_digits=b["digits"], n_layers=b["layers"], n_heads=b["heads"], d_model=b["d_model"],
                 d_head=b["d_head"], d_mlp=d_mlp)
    perc = {"add": 0, "sub": 100}.get(b["task"], b["perc_sub"])
    tc = TrainConfig(task=b["task"], n_digits=b["digits"], steps=b["steps"], batch_size=b["batch_size"],
                     lr=b["lr"], weight_decay=b["weight_decay"], perc_sub=perc, seed=b["seed"],
                     p_short=b.get("p_short", 0.0))
    return cfg, tc


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


def verify_checkpoint(args, p, device):
    model, info, task = open_checkpoint(p, args.checkpoint, args.task, device)
    n = model.cfg.n_digits
    if args.digits is not None and args.digits != n:
        p.error(f"{args.checkpoint}: is a {n}-digit model, not {args.digits}")
    if args.verify == "all" and n > 3:
        p.error(f"--verify all needs at most 3 digits (10^{2 * n} questions per operation here)")
    set_threads(model.cfg)
    t0 = time.time()
    results = verify(model, task, n, args.verify, seed=info.get("seed", 0), progress=not args.no_progress)
    print(report(results))
    print(f"verified in {time.time() - t0:.1f}s")
    return results


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as e:
        p.error(str(e))
    if args.checkpoint:
        results = verify_checkpoint(args, p, device)
        return 0 if all(r["correct"] == r["questions"] for r in results.values()) else 1
    cfg, tc = resolve(args, p)
    if args.verify == "all" and cfg.n_digits > 3:
        p.error(f"--verify all needs at most 3 digits (10^{2 * cfg.n_digits} questions per operation here)")
    set_threads(cfg)
    print({**asdict(cfg), **asdict(tc), "device": str(device), "threads": torch.get_num_threads()})
    model = Transformer(cfg, torch.Generator().manual_seed(tc.seed)).to(device)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters")
    history = train(model, tc, device, progress=not args.no_progress)
    name = run_name(tc, cfg)
    print(f"trained {history['steps_done']} steps in {history['seconds']:.0f}s, final loss {history['loss'][-1]:.3g}")
    write_outputs(args.out, name, model, tc, history)  # saved before checking, so nothing is lost
    results = verify(model, tc.task, cfg.n_digits, args.verify, tc.seed, progress=not args.no_progress)
    print(report(results))
    path = write_outputs(args.out, name, model, tc, history, results)
    print(f"saved {path} (+ .json, _loss.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
