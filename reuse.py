"""
Grow a verified addition model into a larger add-and-subtract model, train it, and show what was reused.

    python reuse.py --from checkpoints/add_d5_l2_h3_t4K_s1.pt --layers 3 --heads 4 --mode init
    python reuse.py --from ... --mode freeze-useful --nodes nodes.json      # or no --nodes: found by ablation
    python reuse.py --compare --from ... --seeds 3 --steps 6000             # inserted vs scratch, K seeds

The source's layer i becomes layer i of the new model (the last layers with --late) and its head h becomes
head h. Everything the source has is copied (SPEC decision 4): every head whole (W_Q, W_K, W_V, W_O and
their biases, b_O), the MLPs, ln1 and ln2 of the inserted layers, ln_final, the embeddings and the
unembedding (W_U, b_U). Then the model trains on mixed add/sub batches with train.py's loop.

Modes (the paper's ins1/ins2/ins3):
- init: everything trains.
- freeze-useful: the useful inserted heads (nodes.json, or found here by mean ablation of the source)
  stay exactly as inserted; useful MLPs train (the reference's mode 2 re-copies heads only).
- freeze-all: every inserted head and MLP stays exactly as inserted.
Freezing is exact: the frozen slices' gradients are zeroed after backward (so Adam's moments stay zero
for them) and the slices are written back after each step (AdamW's weight decay shrinks a weight even
when its gradient is zero). A frozen layer also keeps b_O (shared by its heads, it cannot be split per
head; freezing it costs nothing since any head can add a constant through b_V @ W_O) and ln1 (it feeds
only that layer's heads, and a new head's W_Q/W_K/W_V can absorb any scale); freeze-all keeps ln2 too.
Embeddings, unembedding and ln_final always train: the subtraction tokens must be learned.

--faithful copies only what the reference copies (no W_O, b_O, ln2, ln_final.b, b_U) and "freezes" by
re-copying every 100 steps after the optimizer step (mode 2: useful heads' Q/K/V into head
H - H_source + h; mode 3: all heads' Q/K/V and all MLPs), without resetting Adam's moments.
--preserve zeroes what the new heads and layers write to the residual stream, so the grown model first
answers every addition question exactly as the source does.
After training, reuse_nodes.py mean-ablates every inserted node to say which operation (add, sub with a
positive or a negative answer) still needs it. Defaults: the new model has one more layer and one more head
than the source, 80% subtraction batches (the paper), 3x the source's steps, and the source's lr, batch
size, weight decay and short-operand share (data.shorten; 0 with a paper preset). Left out on purpose:
the successor library's modes 4 and 5, and inserting two models into one.
"""
import os
import sys
from dataclasses import asdict, replace

import torch

import evaluate
import train
from analyse import Node, read_nodes
from model import CheckpointError, Config, Transformer, load_model, pick_device
from reuse_nodes import inserted_node_usage, usage_table, useful_source_heads

PREFIX = {"init": "ins1_", "freeze-useful": "ins2_", "freeze-all": "ins3_"}
PER_HEAD = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")  # attention tensors indexed by head first
FAITHFUL_SKIP = ("attn.W_O", "attn.b_O", "ln2.w", "ln2.b", "ln_final.b", "unembed.b_U")  # SPEC 3.2

# ----------------------------------------------------------------------------- insertion


def check_fit(src: Config, cfg: Config):
    """Raise ValueError (one line) unless a `src` model can be inserted into a `cfg` model."""
    for f in ("n_digits", "d_model", "d_head", "d_mlp", "d_vocab", "act_fn"):
        a, b = getattr(src, f), getattr(cfg, f)
        if a != b:
            raise ValueError(f"the source model has {f} {a} but the target has {b}: they must be equal")
    for f in ("n_layers", "n_heads"):
        a, b = getattr(src, f), getattr(cfg, f)
        if a > b:
            raise ValueError(f"the source model has {f} {a}, more than the target's {b}")


def target_of(name: str, offset: int, n_heads: int):
    """Where source parameter `name` goes: (target name, index). Block i moves to block i+offset;
    per-head tensors fill the first n_heads heads, everything else is copied whole."""
    parts = name.split(".")
    if parts[0] == "blocks":
        parts[1] = str(int(parts[1]) + offset)
    return ".".join(parts), (slice(0, n_heads) if parts[-1] in PER_HEAD else ...)


def insert(src: Transformer, model: Transformer, late=False, faithful=False, preserve=False) -> int:
    """Copy `src` into `model` in place; returns the layer offset (0, or n_layers - src layers if late)."""
    check_fit(src.cfg, model.cfg)
    if faithful and preserve:
        raise ValueError("--preserve needs the full copy (W_O, b_O, ln2, ...): it cannot be combined with --faithful")
    Ls, Hs = src.cfg.n_layers, src.cfg.n_heads
    offset = model.cfg.n_layers - Ls if late else 0
    params = dict(model.named_parameters())
    with torch.no_grad():
        if preserve:  # the new parts write exactly zero into the residual stream until they learn
            for i, block in enumerate(model.blocks):
                if offset <= i < offset + Ls:
                    block.attn.W_O[Hs:] = 0
                else:
                    for p in (block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out):
                        p.zero_()
        for name, p in src.named_parameters():
            if faithful and name.endswith(FAITHFUL_SKIP):
                continue
            tname, index = target_of(name, offset, Hs)
            params[tname][index] = p
    return offset


def reinsert_faithful(src, model, mode, offset, useful_heads):
    """The reference's periodic re-copy (SPEC 3.3): Q/K/V of the useful heads into the right-most heads
    (mode 2), or Q/K/V of all heads into the first heads plus all MLPs (mode 3)."""
    Hs, H = src.cfg.n_heads, model.cfg.n_heads
    with torch.no_grad():
        for i, sb in enumerate(src.blocks):
            tb = model.blocks[offset + i]
            for name in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V"):
                s, t = getattr(sb.attn, name), getattr(tb.attn, name)
                if mode == "freeze-all":
                    t[:Hs] = s
                else:
                    for h in sorted(h for l, h in useful_heads if l == i):
                        t[H - Hs + h] = s[h]  # the reference's index: head h+1 in a 4-head model
            if mode == "freeze-all":
                for name, p in sb.mlp.named_parameters():
                    getattr(tb.mlp, name).copy_(p)


def frozen_slices(model, mode, offset, n_src_layers, n_src_heads, useful_heads=()):
    """[(parameter, index)] that stay as inserted: see the module docstring for what and why."""
    out = []
    for i in range(n_src_layers):
        b = model.blocks[offset + i]
        heads = range(n_src_heads) if mode == "freeze-all" else sorted(h for l, h in useful_heads if l == i)
        out += [(getattr(b.attn, n), h) for h in heads for n in PER_HEAD]
        if heads:
            out += [(b.attn.b_O, ...), (b.ln1.w, ...), (b.ln1.b, ...)]
        if mode == "freeze-all":
            out += [(b.ln2.w, ...), (b.ln2.b, ...)] + [(p, ...) for p in b.mlp.parameters()]
    return out


class Freezer:
    """Keeps parameter slices exactly as they are now: pass `after_backward`/`after_step` to train()."""

    def __init__(self, slices):
        self.slices = [(p, idx, p.detach()[idx].clone()) for p, idx in slices]

    def after_backward(self, model):
        for p, idx, _ in self.slices:
            if p.grad is not None:
                p.grad[idx] = 0

    def after_step(self, model):
        with torch.no_grad():
            for p, idx, value in self.slices:
                p[idx] = value


# ----------------------------------------------------------------------------- grow and train


def grow(src, cfg, mode="init", seed=1, late=False, faithful=False, preserve=False, useful_heads=(), device="cpu"):
    """A new `cfg` model (initialised from `seed`, on `device`) with `src` inserted. Returns (model, offset,
    hooks), hooks being the (after_backward, after_step) for train() that keep the chosen parts as inserted."""
    model = Transformer(cfg, torch.Generator().manual_seed(seed))
    offset = insert(src, model, late, faithful, preserve)
    model.to(device)
    if mode == "init":
        return model, offset, (None, None)
    if faithful:
        count = [0]

        def after_step(m):  # the reference re-copies at steps 0, 100, 200, ... after the optimizer step
            if count[0] % 100 == 0:
                reinsert_faithful(src, m, mode, offset, useful_heads)
            count[0] += 1
        return model, offset, (None, after_step)
    frz = Freezer(frozen_slices(model, mode, offset, src.cfg.n_layers, src.cfg.n_heads, useful_heads))
    return model, offset, (frz.after_backward, frz.after_step)


def steps_below(losses, threshold=1e-3, window=None):
    """The first step (1-based) where the mean loss of the last `window` steps (default: 1% of them, at
    least 10) is below threshold, or None. A window, because one lucky batch is not learning: with
    --preserve the first addition batches are already answered at a loss of ~1e-4."""
    window = window or max(10, len(losses) // 100)
    t = torch.tensor(losses, dtype=torch.float64)
    if len(t) < window:
        return None
    below = (t.unfold(0, window, 1).mean(-1) < threshold).nonzero()
    return int(below[0]) + window if len(below) else None


def plot_compare(curves, title=""):
    """curves: {label: [loss list per seed]}; one colour per label, one line per seed, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (label, runs), color in zip(curves.items(), ["tab:blue", "tab:orange", "tab:green"]):
        for j, loss in enumerate(runs):
            t = torch.tensor(loss).clamp_min(1e-12)
            k = max(1, len(t) // 100)  # smooth over ~1% of the steps
            ax.plot(torch.arange(len(t) - k + 1) + k, t.unfold(0, k, 1).mean(-1), color=color, lw=1,
                    alpha=0.8, label=label if j == 0 else None)
    ax.set(yscale="log", xlabel="step", ylabel="answer loss (NLL)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig

# ----------------------------------------------------------------------------- command line


def build_parser():
    p = train.Parser(description="Insert an addition model into a larger model and train it on add + sub.")
    p.add_argument("--from", dest="source", required=True, help="the checkpoint to insert (an addition model)")
    p.add_argument("--preset", help="a paper configuration: " + ", ".join(k for k in train.PRESETS if k.startswith("ins")))
    p.add_argument("--layers", type=train.positive(int), help="layers of the new model (default: source + 1)")
    p.add_argument("--heads", type=train.positive(int), help="heads per layer of the new model (default: source + 1)")
    for flag in ("digits", "d-model", "d-head", "d-mlp"):
        p.add_argument("--" + flag, type=train.positive(int), help=f"checked against the source (default: the source's {flag})")
    p.add_argument("--mode", choices=list(PREFIX), help="init (ins1), freeze-useful (ins2), freeze-all (ins3); default init")
    p.add_argument("--nodes", help="freeze-useful: the source's useful nodes (JSON); default: found by ablation")
    p.add_argument("--late", action="store_true", help="insert into the last layers instead of the first")
    p.add_argument("--faithful", action="store_true", help="the reference's partial copy and resets every 100 steps")
    p.add_argument("--preserve", action="store_true", help="new heads/layers start writing zero: addition answers unchanged")
    p.add_argument("--perc-sub", type=float, help="%% of batches that are subtraction (default 80, as the paper)")
    p.add_argument("--steps", type=train.positive(int), help="training steps (default: 3x the source's)")
    for flag in ("lr", "batch-size", "weight-decay"):
        p.add_argument("--" + flag, type=float if flag != "batch-size" else train.positive(int),
                       help="default: the source's training setting")
    p.add_argument("--seed", type=int, help="seed for the new model's other weights and the data (default 1)")
    p.add_argument("--compare", action="store_true", help="train inserted and scratch models for --seeds seeds")
    p.add_argument("--seeds", type=train.positive(int), default=3, help="--compare: how many seeds (seed, seed+1, ...)")
    p.add_argument("--verify", type=train.positive(int), default=100_000, help="fresh questions per operation to check")
    p.add_argument("--usage", type=int, default=300, help="questions per set for the node-usage ablation (0: skip)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or mps")
    p.add_argument("--out", default="checkpoints", help="folder for the outputs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def resolve(args, p, src_cfg, info):
    """(target Config, TrainConfig, mode) from the preset, the source checkpoint and explicit flags."""
    pre = {}
    if args.preset:
        if args.preset not in train.PRESETS or "insert" not in train.PRESETS[args.preset]:
            p.error(f"unknown insertion preset {args.preset!r}")
        pre = train.PRESETS[args.preset]
    src_train = info.get("train") or {}
    pick = lambda flag, key, default: next(v for v in (flag, pre.get(key), default) if v is not None)  # noqa: E731
    cfg = replace(src_cfg, n_digits=args.digits or pre.get("digits", src_cfg.n_digits),
                  n_layers=pick(args.layers, "layers", src_cfg.n_layers + 1),
                  n_heads=pick(args.heads, "heads", src_cfg.n_heads + 1),
                  d_model=args.d_model or src_cfg.d_model, d_head=args.d_head or src_cfg.d_head,
                  d_mlp=args.d_mlp or src_cfg.d_mlp)
    try:
        check_fit(src_cfg, cfg)
    except ValueError as e:
        p.error(f"{args.source}: {e}")
    tc = train.TrainConfig(task="mix", n_digits=cfg.n_digits,
                           steps=pick(args.steps, "steps", 3 * int(info.get("steps") or 4000)),
                           batch_size=pick(args.batch_size, "batch_size", src_train.get("batch_size", 256)),
                           lr=pick(args.lr, "lr", src_train.get("lr", 3e-3)),
                           weight_decay=pick(args.weight_decay, "weight_decay", src_train.get("weight_decay", 0.1)),
                           perc_sub=pick(args.perc_sub, "perc_sub", 80), seed=pick(args.seed, "seed", 1),
                           p_short=0.0 if args.preset else src_train.get("p_short", 0.0))  # presets: the paper's data
    if not 0 <= tc.perc_sub <= 100 or tc.lr <= 0 or tc.weight_decay < 0:
        p.error("--perc-sub must be 0..100, --lr positive and --weight-decay not negative")
    mode = args.mode or pre.get("insert", "init")
    if args.nodes and mode != "freeze-useful":
        p.error("--nodes is only used with --mode freeze-useful")
    return cfg, tc, mode


def accuracy(results, op):
    r = results[f"{op} uniform"]
    return r["correct"] / r["questions"]


def run_one(src, cfg, tc, mode, args, heads, device, scratch=False):
    """Train one model (inserted, or from scratch); returns (model, offset, history, name)."""
    if scratch:
        model, offset, (ab, st) = Transformer(cfg, torch.Generator().manual_seed(tc.seed)), None, (None, None)
        name = train.run_name(tc, cfg)
    else:
        model, offset, (ab, st) = grow(src, cfg, mode, tc.seed, args.late, args.faithful, args.preserve, heads, device)
        name = train.run_name(tc, cfg, PREFIX[mode]) + "_late" * args.late + "_faithful" * args.faithful \
            + "_preserve" * args.preserve
    history = train.train(model.to(device), tc, device, ab, st, progress=not args.no_progress)
    print(f"{name}: {history['steps_done']} steps in {history['seconds']:.0f}s, final loss {history['loss'][-1]:.3g}")
    return model, offset, history, name


def compare(src, cfg, tc, mode, args, heads, device):
    """Inserted vs scratch for args.seeds seeds: a markdown table and a loss-curve plot in args.out."""
    rows, curves = [], {"inserted": [], "scratch": []}
    for seed in range(tc.seed, tc.seed + args.seeds):
        for kind in curves:
            t = replace(tc, seed=seed)
            model, _, hist, name = run_one(src, cfg, t, mode, args, heads, device, scratch=kind == "scratch")
            res = evaluate.verify(model, "mix", cfg.n_digits, args.verify, seed, progress=not args.no_progress)
            train.write_outputs(args.out, name, model, t, hist, res, source=args.source,
                                insert=None if kind == "scratch" else dict(mode=mode, late=args.late,
                                                                           faithful=args.faithful, preserve=args.preserve))
            named_wrong = sum(r["questions"] - r["correct"] for k, r in res.items() if not k.endswith(evaluate.FRESH))
            rows.append(dict(seed=seed, model=kind, final_loss=sum(hist["loss"][-5:]) / len(hist["loss"][-5:]),
                             below_1e3=steps_below(hist["loss"]), add=accuracy(res, "add"), sub=accuracy(res, "sub"),
                             named_wrong=named_wrong))
            curves[kind].append(hist["loss"])
    label = f"{PREFIX[mode]}mix_d{cfg.n_digits}_l{cfg.n_layers}_h{cfg.n_heads}_t{tc.steps / 1000:g}K"
    base = os.path.join(args.out, f"compare_{label}_s{tc.seed}-{tc.seed + args.seeds - 1}")
    lines = [f"Inserted ({mode}{', faithful' if args.faithful else ''}{', preserve' if args.preserve else ''}) vs "
             f"scratch: `{args.source}` into {cfg.n_layers} layers x {cfg.n_heads} heads, {tc.steps} steps, "
             f"{tc.perc_sub:g}% sub, lr {tc.lr:g}, batch {tc.batch_size}; {args.verify:,} fresh questions per operation.",
             "", "| seed | model | avg final loss | steps to mean loss < 1e-3 | add correct | sub correct | named-set errors |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['model']} | {r['final_loss']:.3g} | {r['below_1e3'] or 'never'} | "
                     f"{100 * r['add']:.4f}% | {100 * r['sub']:.4f}% | {r['named_wrong']} |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + f"\n\n![loss curves]({os.path.basename(base)}.png)\n")
    plot_compare(curves, f"{label}: inserted vs scratch").savefig(base + ".png", dpi=110)
    print("\n".join(lines))
    print(f"wrote {base}.md and .png")
    return rows


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
        src, info = load_model(args.source)  # on the CPU: it is copied, never trained
    except (ValueError, CheckpointError) as e:
        p.error(str(e))
    cfg, tc, mode = resolve(args, p, src.cfg, info)
    if args.faithful and args.preserve:
        p.error("--preserve needs the full copy (W_O, b_O, ln2, ...): it cannot be combined with --faithful")
    train.set_threads(cfg)
    print({**asdict(cfg), **asdict(tc), "mode": mode, "source": args.source, "late": args.late,
           "faithful": args.faithful, "preserve": args.preserve, "device": str(device)})
    heads = ()
    if mode == "freeze-useful":
        try:
            heads = ({(nd.layer, nd.head) for nd in read_nodes(args.nodes, src.cfg) if not nd.is_mlp} if args.nodes
                     else useful_source_heads(src, progress=not args.no_progress))
        except ValueError as e:
            p.error(str(e))
        print("useful source heads kept as inserted:", " ".join(Node(0, *n).component for n in sorted(heads)) or "none")
    if args.compare:
        compare(src, cfg, tc, mode, args, heads, device)
        return 0
    model, offset, history, name = run_one(src, cfg, tc, mode, args, heads, device)
    extra = dict(source=args.source, insert=dict(mode=mode, offset=offset, late=args.late, faithful=args.faithful,
                                                 preserve=args.preserve, frozen_heads=sorted(heads)))
    train.write_outputs(args.out, name, model, tc, history, **extra)  # saved before checking
    results = evaluate.verify(model, "mix", cfg.n_digits, args.verify, tc.seed, progress=not args.no_progress)
    print(evaluate.report(results))
    if args.usage > 0:
        rows, base = inserted_node_usage(model.cpu(), src.cfg, offset, args.usage, tc.seed, not args.no_progress)
        print("what the inserted nodes do now (mean ablation, share of correct answers broken):")
        print(usage_table(rows, base))
        extra["node_usage"] = dict(rows=rows, baseline=base)
    path = train.write_outputs(args.out, name, model, tc, history, results, **extra)
    print(f"saved {path} (+ .json, _loss.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
