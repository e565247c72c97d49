"""
What a training run leaves behind, in one folder (runs/ by default): <name>.pt (weights and config),
<name>.json (configs, losses overall and per answer position, the checks, the verification results),
<name>_loss.png (the loss curves and the errors at each check) and, after Ctrl-C, <name>.resume.pt
(everything `train.py --resume` needs to continue the run). Every file is written atomically.
`tc` below is a train.TrainConfig. Checkpoints are written here (`save_model`) and read by `model.load_model`.
"""
import io
import json
import os
import time
import tempfile
from dataclasses import asdict

import torch

from evaluate import FRESH
from model import CheckpointError, Config, Transformer

# ----------------------------------------------------------------------------- checkpoints: saving


def plain(value):
    """numpy scalars and 0-d tensors or arrays -> Python numbers, other numpy arrays -> lists, tensors -> CPU
    copies, through dicts, lists and tuples: values that `torch.load(weights_only=True)` reads back."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value] if isinstance(value, list) else tuple(plain(v) for v in value)
    if isinstance(value, torch.Tensor):
        return value.item() if value.dim() == 0 else value.detach().cpu()
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # numpy, without importing it
        return value.tolist()  # a scalar or 0-d array gives a Python number
    return value


def unreadable(value, where="info"):
    """Where in `value` lies something that `torch.load(weights_only=True)` cannot read back (for example
    `info['run'][2]`) and its type name, or None when all of it round-trips."""
    try:
        buf = io.BytesIO()
        torch.save(value, buf)
        torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
        return None
    except Exception:  # pickling or unpickling failed: find the innermost part that fails
        seq = isinstance(value, (list, tuple))
        parts = value.items() if isinstance(value, dict) else enumerate(value) if seq else ()
        found = [f for k, v in parts for f in [unreadable(v, f"{where}[{k!r}]")] if f]
        return found[0] if found else (where, type(value).__name__)


def save_model(path, model: Transformer, **info):
    """Write {format, state_dict, config, info} atomically: a temp file in the same folder, then rename,
    so an interrupted save never leaves a half-written checkpoint behind. `info` goes through `plain`;
    anything still unreadable by `torch.load(weights_only=True)` raises CheckpointError, naming it,
    before a byte is written, so a checkpoint that saves always loads."""
    path = str(path)
    info = plain(info)
    found = unreadable(info)
    if found:
        raise CheckpointError(f"{path}: not saved: {found[0]} is a {found[1]}, which torch.load(weights_only=True) "
                              "cannot read back; store numbers, strings, lists, dicts or tensors")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {"format": "verified-arithmetic/1", "state_dict": state, "config": asdict(model.cfg), "info": info}
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes the file private; a checkpoint is for sharing
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

# ----------------------------------------------------------------------------- a training run's files


def run_name(tc, cfg: Config, prefix="", steps=None):
    """Named like the papers' successor: add_d5_l2_h3_t15K_s372001, by `steps` (default tc.steps) trained;
    a step count that is not a multiple of 100 is written out (t514)."""
    steps = tc.steps if steps is None else steps
    t = f"{steps / 1000:g}K" if steps % 100 == 0 else str(steps)
    return f"{prefix}{tc.task}_d{cfg.n_digits}_l{cfg.n_layers}_h{cfg.n_heads}_t{t}_s{tc.seed}"


def plot_losses(history, n_digits, title=""):
    """Overall loss and one curve per answer token (log scale, smoothed over ~1% of the steps) and,
    when the run was checked, the errors at each check below them (symlog: 0 shows)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    per_pos = torch.tensor(history["per_position"]).clamp_min(1e-12)  # (steps, n+2)
    k = max(1, len(per_pos) // 100)
    smooth = per_pos.unfold(0, k, 1).mean(-1) if len(per_pos) >= k else per_pos  # (steps-k+1, n+2)
    x = torch.arange(len(smooth)) + k
    checks = history.get("checks") or []
    fig = plt.figure(figsize=(13, 7 if checks else 4.5))
    grid = fig.add_gridspec(2 if checks else 1, 2, height_ratios=[2, 1] if checks else [1])
    ax1, ax2 = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax1.plot(x, smooth.mean(1), color="black")
    ax1.set(yscale="log", xlabel="step", ylabel="answer loss (NLL)", title=f"{title} loss")
    names = ["sign"] + [f"A{n_digits - i}" for i in range(n_digits + 1)]
    colors = plt.cm.tab10 if len(names) <= 10 else plt.cm.tab20  # distinct hues, one per token
    for i, name in enumerate(names):
        ax2.plot(x, smooth[:, i], label=name, color=colors(i), lw=1.2)
    ax2.set(yscale="log", xlabel="step", title="loss per answer token")
    ax2.legend(ncol=2, fontsize=8)
    axes = [ax1, ax2]
    if checks:
        ax3 = fig.add_subplot(grid[1, :], sharex=ax1)
        steps = [c["step"] for c in checks]
        for kind, color in (("uniform", "tab:blue"), ("enriched", "tab:orange"), ("named sets", "tab:red")):
            pick = (lambda s: s.endswith(kind)) if kind != "named sets" else (lambda s: not s.endswith(FRESH))
            ax3.plot(steps, [sum(v for s, v in c["errors"].items() if pick(s)) for c in checks], "o-",
                     label=kind, color=color, ms=3)
        if history.get("verified_step"):
            ax3.axvline(history["verified_step"], color="green", ls="--", label="first zero-error check")
        ax3.set_yscale("symlog", linthresh=1)
        ax3.set(ylim=(0, None), xlabel="step", ylabel="errors at the check", title="errors at each check")
        ax3.legend(fontsize=8)
        axes.append(ax3)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def write_outputs(out, name, model, tc, history, results=None, **extra):
    """The checkpoint, its .json (config, losses, checks, verify results) and its _loss.png, all named
    `name` in folder `out`, each written atomically."""
    os.makedirs(out, exist_ok=True)
    final = history["loss"][-5:] or [float("nan")]
    info = dict(task=tc.task, seed=tc.seed, steps=history["steps_done"], final_loss=final[-1],
                avg_final_loss=sum(final) / len(final), train=asdict(tc), **extra)
    save_model(os.path.join(out, name + ".pt"), model, **info)
    k = max(1, len(history["loss"]) // 2000)  # keep the .json small: at most ~2000 points per curve
    js = dict(info, name=name, config=asdict(model.cfg), seconds=history["seconds"],
              interrupted=history["interrupted"], verified_step=history.get("verified_step"),
              checks=history.get("checks", []), loss_every=k, loss=[round(v, 10) for v in history["loss"][::k]],
              per_position=[[round(v, 10) for v in row] for row in history["per_position"][::k]],
              verify=results)
    tmp = os.path.join(out, name + ".json.tmp")
    with open(tmp, "w") as f:
        json.dump(js, f, indent=1)
    os.replace(tmp, os.path.join(out, name + ".json"))
    fig = plot_losses(history, model.cfg.n_digits, name)
    fig.savefig(os.path.join(out, name + "_loss.tmp.png"), dpi=110)
    os.replace(os.path.join(out, name + "_loss.tmp.png"), os.path.join(out, name + "_loss.png"))
    return os.path.join(out, name + ".pt")


def record_verification(checkpoint, results, n_questions, seconds):
    """Add a `--verify` of a saved checkpoint to its .json (beside the .pt; created if missing, e.g. for a
    TransformerLens file) under "verifications": [{"questions" (per operation, or 'all'), "seconds",
    "utc", "results" (evaluate.verify's dict)}], written atomically. Returns the .json's path."""
    path = os.path.splitext(checkpoint)[0] + ".json"
    js = {}
    if os.path.exists(path):
        with open(path) as f:
            js = json.load(f)
    js.setdefault("verifications", []).append(dict(
        questions=n_questions, seconds=round(seconds, 1), results=results,
        utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())))
    with open(path + ".tmp", "w") as f:
        json.dump(js, f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def save_resume(path, model, tc, history):
    """What `--resume` needs to continue an interrupted run, in one file written atomically: the weights,
    the model and training configs and the history (with the optimizer, schedule and generator states)."""
    blob = dict(weights=model.state_dict(), config=asdict(model.cfg), train=asdict(tc), history=history)
    torch.save(blob, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_resume(path, device="cpu"):
    """(model, training config as a dict, history) from a file of `save_resume`.
    Raises CheckpointError (one line) if the file is missing or is not such a file."""
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
        model = Transformer(Config.from_dict(blob["config"])).to(device)
        model.load_state_dict(blob["weights"])
        return model, blob["train"], blob["history"]
    except Exception as e:  # any unreadable file, a checkpoint without a resume state, a config that does not fit
        why = ("no resume state: Ctrl-C writes <name>.resume.pt beside the model" if isinstance(e, KeyError)
               else f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]}")
        raise CheckpointError(f"{path}: not a resumable run ({why})") from None


def free_name(out, name, overwrite):
    """`name`, or with --overwrite absent and a checkpoint of that name in `out`, the first free `name_2`, ..."""
    base, i = name, 1
    while not overwrite and os.path.exists(os.path.join(out, name + ".pt")):
        i += 1
        name = f"{base}_{i}"
    return name


def describe(cfg: Config, tc, device, n_params, threads) -> str:
    """The settings of a run as readable lines."""
    checks = (f"every {tc.check_every:,} steps on {tc.check_questions:,} fresh uniform and enriched questions per "
              f"operation and the named sets" + ("; stop at the first with zero errors" * tc.until_verified)
              if tc.check_every else "none during training")
    shares = {"batch": "batches", "question": "every batch's questions"}
    return "\n".join([
        f"model:    {cfg.n_layers} layers, {cfg.n_heads} heads, d_model {cfg.d_model}, d_head {cfg.d_head}, "
        f"d_mlp {cfg.d_mlp}, {cfg.n_digits} digits: {n_params:,} parameters",
        f"task:     {tc.task}" + (f", {tc.perc_sub:g}% of {shares[tc.mix_by]} subtraction" if tc.task == "mix" else "")
        + f"; enrichment {f'on (by {tc.enrich_by})' if tc.enrichment else 'off'}, {tc.p_short:.0%} short operands"
        + (f", {tc.p_sparse:.0%} sparse operands" if tc.p_sparse else "")
        + (f", {tc.p_near9:.0%} of additions with a carry into a 7 or 8" if tc.p_near9 else ""),
        f"training: {tc.steps:,} steps of {tc.batch_size} questions, AdamW{' (AMSGrad)' * tc.amsgrad} lr {tc.lr:g} "
        f"(warm-up {tc.warmup:.0%}, then cosine{f' x sqrt(min(1, loss / {tc.lr_loss_ref:g}))' * bool(tc.lr_loss_ref)}), "
        f"betas {tc.betas[0]:g}, {tc.betas[1]:g}, weight decay {tc.weight_decay:g}, "
        f"gradient clipping {f'to norm {tc.clip:g}' if tc.clip else 'off'}",
        f"checks:   {checks}",
        f"seed {tc.seed}, device {device}{cpu_note(device)}, {threads} thread(s)"])


def cpu_note(device) -> str:
    """' (AVX2)' and the like on the CPU: the instruction set PyTorch's kernels use. Another one sums in
    another order, so the same seed gives another run (docs/training.md, seventh round)."""
    return f" ({torch.backends.cpu.get_cpu_capability()})" if torch.device(device).type == "cpu" else ""
