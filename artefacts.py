"""
What a training run leaves behind, in one folder (runs/ by default): <name>.pt (weights and config),
<name>.json (configs, losses overall and per answer position, the checks, the verification results),
<name>_loss.png (the loss curves and the errors at each check) and, after Ctrl-C, <name>.resume.pt
(everything `train.py --resume` needs to continue the run). Every file is written atomically.
`tc` below is a train.TrainConfig.
"""
import json
import os
from dataclasses import asdict

import torch

from evaluate import FRESH
from model import CheckpointError, Config, Transformer, save_model


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
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: not a resumable run ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def free_name(out, name, overwrite):
    """`name`, or with --overwrite absent and a checkpoint of that name in `out`, the first free `name_2`, ..."""
    base, i = name, 1
    while not overwrite and os.path.exists(os.path.join(out, name + ".pt")):
        i += 1
        name = f"{base}_{i}"
    return name
