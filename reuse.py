"""
Grow a verified addition model into a larger add-and-subtract model, train it, and show what was reused.

    python reuse.py --from checkpoints/add_d5_l2_h3_t6K_s1.pt --layers 3 --heads 4 --mode init
    python reuse.py --from ... --mode freeze-all --freeze-embed --preserve   # the adder stays the verified one
    python reuse.py --compare --from ... --seeds 5 --until-verified          # grown vs scratch (compare.py)

The source (an addition model: its checkpoint says so, unless it is a TransformerLens file, and it answers
fresh additions; --any-source inserts anything that fits) is copied whole: its layer i becomes layer i of
the new model (the last layers with --late), head h becomes head h (W_Q, W_K, W_V, W_O, their biases, b_O),
with the MLPs, ln1 and ln2, ln_final, the embeddings and the unembedding (W_U, b_U). Then the model trains
on mixed add/sub batches with train.py's loop. Modes (the second paper's ins1/ins2/ins3):
- init: everything trains.
- freeze-useful: the useful inserted heads (nodes.json, or found here by mean ablation of the source)
  stay exactly as inserted; useful MLPs train (the reference's mode 2 re-copies heads only).
- freeze-all: every inserted head and MLP stays exactly as inserted.
Freezing is exact: the frozen slices' gradients are zeroed after backward (so Adam's moments stay zero
for them) and the slices are written back after each step (AdamW's weight decay shrinks a weight even
when its gradient is zero). A frozen layer also keeps b_O (shared by its heads, it cannot be split per
head; freezing it costs nothing since any head can add a constant through b_V @ W_O) and ln1 (it feeds
only that layer's heads, and a new head's W_Q/W_K/W_V can absorb any scale); freeze-all keeps ln2 too.
The embeddings, unembedding and ln_final train (the subtraction tokens must be learned) unless
--freeze-embed keeps them too: with freeze-all every inserted weight then stays the verified adder's.
--preserve zeroes what the new heads and layers write to the residual stream, so the grown model first
answers every addition exactly as the source does. The grown model's addition is checked right after
insertion (on a training check's questions) and after training; the .json records both, and which of the
source's tensors changed. --faithful copies only what the reference notebook copies and "freezes" by
re-copying every 100 steps (docs/reuse.md). After training, reuse_nodes.py mean-ablates every inserted node to
say which operation (add, sub with a positive or a negative answer) still needs it. Defaults: one more layer
and head than the source, 80% subtraction batches (the paper), 3x the source's steps, and the source's
recipe (lr, batch, weight decay, warm-up, clipping, betas, short and sparse operands; the paper's with a
preset). Left out on purpose: the successor library's modes 4 and 5, and inserting two models into one.
"""
import hashlib
import os
import sys
from dataclasses import asdict, replace

import torch

import compare
import data
import evaluate
import train
from analyse import Node, read_nodes
from artefacts import describe, free_name, run_name, write_outputs
from model import CheckpointError, Config, Transformer, load_model, pick_device
from reuse_nodes import inserted_node_usage, usage_table, useful_source_heads

HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX = {"init": "ins1_", "freeze-useful": "ins2_", "freeze-all": "ins3_"}
RECIPE = ("p_short", "p_sparse", "p_near9", "warmup", "clip", "betas", "eps")  # taken from the source (a preset: the papers')
PER_HEAD = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")  # attention tensors indexed by head first
FAITHFUL_SKIP = ("attn.W_O", "attn.b_O", "ln2.w", "ln2.b", "ln_final.b", "unembed.b_U")  # the reference leaves these
ENDS = ("embed.W_E", "pos_embed.W_pos", "ln_final.w", "ln_final.b", "unembed.W_U", "unembed.b_U")  # --freeze-embed
# The comparison's arms: how each one grows its model; None is the same architecture trained from scratch.
# keep-adder: every inserted weight stays the verified adder's, which answers additions as before until
# the new parts learn to write into the residual stream.
ARMS = {"init": dict(mode="init"), "scratch": None, "preserve": dict(mode="init", preserve=True),
        "freeze-useful": dict(mode="freeze-useful"), "freeze-all": dict(mode="freeze-all"),
        "keep-adder": dict(mode="freeze-all", freeze_embed=True, preserve=True)}

# ----------------------------------------------------------------------------- the source


def source_id(path) -> dict:
    """How a grown model names its source without the absolute paths of the machine it was made on:
    {"file": the path relative to this repository (the file name when it lies outside), "sha256": the
    first 16 hex digits of the file's SHA-256}."""
    full = os.path.abspath(path)
    try:
        rel = os.path.relpath(full, HERE)
    except ValueError:  # another drive (Windows)
        rel = os.pardir
    inside = rel != os.pardir and not rel.startswith(os.pardir + os.sep)
    with open(full, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()  # checkpoints are small: read whole
    return dict(file=rel if inside else os.path.basename(full), sha256=digest[:16])


def check_source(src: Transformer, info: dict, n_questions=2000, seed=0, min_share=0.99) -> float:
    """Raise ValueError (one line) unless `src` is an addition model: its checkpoint says task "add" (a
    TransformerLens file says nothing) and it answers at least `min_share` of `n_questions` fresh addition
    questions right (drawn as in training, with enrichment). Returns that share (0 to 1)."""
    task = info.get("task")
    if task not in (None, "add"):
        raise ValueError(f"is a {task} model, not an addition model")
    gen = torch.Generator().manual_seed(seed + 3_000_017)  # apart from training's and verify's generators
    questions = data.random_batch("add", src.cfg.n_digits, n_questions, gen)  # (N, 3n+4)
    ok, _, _ = evaluate.score(src, questions, src.cfg.n_digits, with_loss=False)
    share = ok.float().mean().item()
    if share < min_share:
        raise ValueError(f"answers {100 * share:.1f}% of {n_questions:,} fresh addition questions right: "
                         "not an addition model")
    return share

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


def changed_from_source(src: Transformer, model: Transformer, offset: int) -> list:
    """Names of the source's parameters whose copy in `model` (inserted at layer `offset`) is no longer
    bit-identical to the source's: [] when the inserted adder is exactly the one that was verified."""
    params = dict(model.named_parameters())
    changed = []
    for name, p in src.named_parameters():
        tname, index = target_of(name, offset, src.cfg.n_heads)
        if not torch.equal(params[tname].detach()[index].cpu(), p.detach().cpu()):
            changed.append(name)
    return changed


def reinsert_faithful(src, model, mode, offset, useful_heads):
    """The reference notebook's periodic re-copy: Q/K/V of the useful heads into the right-most heads
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


def frozen_slices(model, mode, offset, n_src_layers, n_src_heads, useful_heads=(), freeze_embed=False):
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
    if freeze_embed:
        params = dict(model.named_parameters())
        out += [(params[name], ...) for name in ENDS]
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


# ----------------------------------------------------------------------------- grow, train, compare


def grow(src, cfg, mode="init", seed=1, late=False, faithful=False, preserve=False, useful_heads=(), device="cpu",
         freeze_embed=False):
    """A new `cfg` model (initialised from `seed`, on `device`) with `src` inserted. Returns (model, offset,
    hooks), hooks being the (after_backward, after_step) for train() that keep the chosen parts as inserted.
    Raises ValueError (one line) for --faithful with --preserve or --freeze-embed."""
    if faithful and freeze_embed:
        raise ValueError("--freeze-embed keeps exact copies: it cannot be combined with --faithful")
    model = Transformer(cfg, torch.Generator().manual_seed(seed))
    offset = insert(src, model, late, faithful, preserve)
    model.to(device)
    if mode == "init" and not freeze_embed:
        return model, offset, (None, None)
    if faithful:
        count = [0]

        def after_step(m):  # the reference re-copies at steps 0, 100, 200, ... after the optimizer step
            if count[0] % 100 == 0:
                reinsert_faithful(src, m, mode, offset, useful_heads)
            count[0] += 1
        return model, offset, (None, after_step)
    slices = frozen_slices(model, mode, offset, src.cfg.n_layers, src.cfg.n_heads, useful_heads, freeze_embed)
    frz = Freezer(slices)
    return model, offset, (frz.after_backward, frz.after_step)


def run(src, cfg, tc, how, heads, device, args, out, source, usage=0, overwrite=False, unclean=None):
    """Train one model of `cfg` on tc's data and write it to `out` (checkpoint, .json, _loss.png; a
    checkpoint of the same name is kept, the new one numbered, unless `overwrite`). how: None trains from
    scratch (initialised from tc.seed, so its new parts start as the grown model's do); else a dict (mode,
    late, faithful, preserve, freeze_embed) says how `src` is grown. A grown model's addition is checked
    right after insertion (a training check's questions) and after training (errors per set, and which
    source tensors changed); with usage > 0, which inserted nodes each operation still needs. After
    training: args.verify fresh uniform questions per operation, a tenth as many enriched ones, every named
    and every sparse set; `unclean` (if given) replaces args.verify for a run that had checks but no
    zero-error one (it cannot be verified; its error rate needs fewer questions). Returns (model, name,
    history, results, info); results is None when Ctrl-C stopped training (then nothing is verified)."""
    progress = not args.no_progress
    if how is None:
        model, offset, hooks = Transformer(cfg, torch.Generator().manual_seed(tc.seed)).to(device), None, (None, None)
        prefix, suffix, info = "", "", {}
    else:
        model, offset, hooks = grow(src, cfg, seed=tc.seed, useful_heads=heads, device=device, **how)
        prefix = PREFIX[how["mode"]]
        suffix = "".join("_" + k.split("_")[-1] for k in ("late", "faithful", "preserve", "freeze_embed") if how[k])
        before = evaluate.verify(model, "add", cfg.n_digits, tc.check_questions, tc.seed, progress=False,
                                 sparse_sample=tc.check_questions)  # a training check's size
        info = dict(source=source, insert=dict(how, offset=offset, frozen_heads=sorted(heads)),
                    adder=dict(at_insertion=evaluate.errors(before)))
        print(f"right after insertion: {sum(info['adder']['at_insertion'].values()):,} errors in "
              f"{sum(r['questions'] for r in before.values()):,} addition questions")
    history = train.train(model, tc, device, *hooks, progress=progress)
    done = history["steps_done"]
    name = free_name(out, run_name(tc, cfg, prefix, steps=done) + suffix, overwrite)
    if not done:
        print("interrupted before the first step: nothing saved")
        return model, name, history, None, info
    print(f"{name}: {done:,} steps in {history['seconds']:.0f}s, final loss {history['loss'][-1]:.3g}")
    if history["interrupted"]:
        path = write_outputs(out, name, model, tc, history, **info)
        print(f"interrupted: saved {path}; check it with python train.py --verify {args.verify} --checkpoint {path}")
        return model, name, history, None, info
    n = args.verify if unclean is None or history["verified_step"] is not None or not history["checks"] else unclean
    try:
        results = evaluate.verify(model, "mix", cfg.n_digits, n, tc.seed, progress=progress, n_enriched=n // 10)
        print(evaluate.report(results))
        if how is not None:
            after = {k: v for k, v in evaluate.errors(results).items() if k.lower().startswith("add")}
            info["adder"].update(after_training=after, changed=changed_from_source(src, model, offset))
            print(f"after training: {sum(after.values()):,} addition errors; source tensors changed: "
                  f"{', '.join(info['adder']['changed']) or 'none (every inserted weight is as in the source)'}")
            if usage > 0:
                rows, base = inserted_node_usage(model.cpu(), src.cfg, offset, usage, tc.seed, progress)
                print("what the inserted nodes do now (mean ablation, share of correct answers broken):")
                print(usage_table(rows, base))
                info["node_usage"] = dict(rows=rows, baseline=base)
    except BaseException:  # Ctrl-C while checking: keep what was trained
        write_outputs(out, name, model, tc, history, **info)
        raise
    path = write_outputs(out, name, model, tc, history, results, **info)
    print(f"saved {path} (+ .json, _loss.png)")
    return model, name, history, results, info


def run_compare(src, cfg, tc, args, heads, device, plan):
    """The comparison (compare.run_all): every arm of the plan (compare.plan) for its seeds, each run
    trained by `run` on the seed's data. Then, with args.usage > 0, the node usage of the best grown run,
    and the report of every finished run in the folder. Returns the report's path."""
    folder, settings, arms, done = plan

    def one(arm, seed):
        how = None if ARMS[arm] is None else dict(dict(preserve=False, freeze_embed=False), **ARMS[arm],
                                                   late=args.late, faithful=args.faithful)
        _, name, history, results, info = run(src, cfg, replace(tc, seed=seed), how, heads, device, args, folder,
                                              settings["source"], overwrite=True, unclean=args.verify // 10)
        return name, history, results, info.get("adder")
    rows = compare.run_all(folder, settings, arms, tc.seed, done, one, list(ARMS))
    usage, best = None, compare.best_grown(rows)
    if args.usage > 0 and best:
        model, info = load_model(os.path.join(folder, best["name"] + ".pt"))
        u_rows, base = inserted_node_usage(model, src.cfg, info["insert"]["offset"], args.usage, best["seed"],
                                           not args.no_progress)
        usage = dict(run=best["name"], rows=u_rows, baseline=base, table=usage_table(u_rows, base))
    return compare.write_report(folder, settings, rows, usage)

# ----------------------------------------------------------------------------- command line


def build_parser():
    p = train.Parser(prog="reuse.py", description="Insert an addition model into a larger model and train it on add + sub.")
    p.add_argument("--from", dest="source", required=True, help="the checkpoint to insert (an addition model)")
    p.add_argument("--any-source", action="store_true", help="insert the source even if it is not an addition model")
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
    p.add_argument("--freeze-embed", action="store_true", help="also keep the embeddings, unembedding and ln_final as inserted")
    p.add_argument("--perc-sub", type=float, help="%% of batches that are subtraction (default 80, as the paper)")
    p.add_argument("--steps", type=train.positive(int), help="training steps, the budget (default: 3x the source's)")
    for flag in ("lr", "batch-size", "weight-decay"):
        p.add_argument("--" + flag, type=float if flag != "batch-size" else train.positive(int),
                       help="default: the source's training setting")
    p.add_argument("--seed", type=int, help="seed for the new model's other weights and the data (default 1)")
    p.add_argument("--until-verified", action="store_true", help="stop at the first check with zero errors")
    p.add_argument("--check-every", type=train.positive(int), default=500, help="steps between checks (default 500)")
    p.add_argument("--check-questions", type=train.positive(int), default=train.TrainConfig.check_questions,
                   help="fresh uniform and enriched questions per operation at each check, with every named set "
                        f"(default {train.TrainConfig.check_questions:,})")
    p.add_argument("--compare", action="store_true", help="train every --arms arm for --seeds seeds, resumably")
    p.add_argument("--arms", default="init,scratch",
                   help=f"--compare: arms, each optionally :seeds (e.g. init,scratch,freeze-all:3) from {', '.join(ARMS)}")
    p.add_argument("--seeds", type=train.positive(int), default=5, help="--compare: seeds per arm (seed, seed+1, ...)")
    p.add_argument("--verify", type=train.positive(int), default=1_000_000,
                   help="fresh uniform questions per operation to check at the end (and a tenth as many enriched)")
    p.add_argument("--usage", type=int, default=300, help="questions per set for the node-usage ablation (0: skip)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or mps")
    p.add_argument("--out", default="runs", help="folder for the outputs (default runs)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint of the same name (else: name_2)")
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
                           **({} if args.preset else {k: src_train[k] for k in RECIPE if k in src_train}),
                           check_every=args.check_every, check_questions=args.check_questions,
                           until_verified=args.until_verified)
    if not 0 <= tc.perc_sub <= 100 or tc.lr <= 0 or tc.weight_decay < 0:
        p.error("--perc-sub must be 0..100, --lr positive and --weight-decay not negative")
    mode = args.mode or pre.get("insert", "init")
    if args.nodes and mode != "freeze-useful":
        p.error("--nodes is only used with --mode freeze-useful")
    if args.compare and (args.mode or args.preserve or args.freeze_embed):
        p.error("--compare takes its arms from --arms (init, preserve, freeze-all, keep-adder, ...), not "
                "--mode, --preserve or --freeze-embed")
    if args.faithful and (args.preserve or args.freeze_embed):
        p.error("--preserve and --freeze-embed need the full copy (W_O, b_O, ln2, ...): not with --faithful")
    return cfg, tc, mode


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
        src, info = load_model(args.source)  # on the CPU: it is copied, never trained
        source = source_id(args.source)
    except (ValueError, CheckpointError) as e:
        p.error(str(e))
    cfg, tc, mode = resolve(args, p, src.cfg, info)
    train.set_threads(cfg)
    if not args.any_source:
        try:
            share = check_source(src, info, seed=tc.seed)
        except ValueError as e:
            p.error(f"{args.source}: {e} (--any-source inserts it anyway)")
        print(f"source {source['file']}: an addition model ({100 * share:.1f}% of 2,000 fresh additions right)")
    heads, plan = (), None
    try:
        if args.compare:
            settings = dict(source=source, config=asdict(cfg), late=args.late, faithful=args.faithful,
                            verify=args.verify, train={k: v for k, v in asdict(tc).items() if k != "seed"})
            folder = os.path.join(args.out, "compare_" + run_name(tc, cfg).rsplit("_s", 1)[0])
            plan = compare.plan(folder, settings, args.arms, args.seeds, ARMS)
            if args.faithful and {"preserve", "keep-adder"} & set(plan[2]):
                raise ValueError("the preserve and keep-adder arms need the full copy: not with --faithful")
        if "freeze-useful" in (plan[2] if plan else [mode]):
            heads = ({(nd.layer, nd.head) for nd in read_nodes(args.nodes, src.cfg) if not nd.is_mlp} if args.nodes
                     else useful_source_heads(src, progress=not args.no_progress))
            print("useful source heads kept as inserted:", " ".join(Node(0, *n).component for n in sorted(heads)) or "none")
    except ValueError as e:
        p.error(str(e))
    flags = [k for k in ("late", "faithful", "preserve", "freeze_embed") if getattr(args, k)]
    print(describe(cfg, tc, device, sum(p.numel() for p in Transformer(cfg).parameters()), torch.get_num_threads()))
    print(f"grow:     {'compare ' + args.arms if args.compare else mode} from {source['file']} "
          f"(sha256 {source['sha256']})" + (f"; {', '.join(flags)}" if flags else ""), flush=True)
    try:
        if plan:
            print(f"wrote {run_compare(src, cfg, tc, args, heads, device, plan)} (+ .json, .png)")
            return 0
        how = dict(mode=mode, late=args.late, faithful=args.faithful, preserve=args.preserve, freeze_embed=args.freeze_embed)
        results = run(src, cfg, tc, how, heads, device, args, args.out, source, args.usage, args.overwrite)[3]
        return 0 if results else 130
    except KeyboardInterrupt:
        print("reuse.py: interrupted: finished runs are kept, and the same command continues", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
