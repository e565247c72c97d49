"""
The drawn algorithm: every useful node at its position (along the bottom) and layer (up the side), with
the sub-tasks interventions.discover verified for it, the operand digits its attention reads, and an
arrow wherever a node works for an answer digit predicted at a later position (the carry paths) - the
layout of the algorithm figure of "Understanding Addition in Transformers", drawn from measurements.

    python analyse.py checkpoints/add_d5_l2_h3_t6K_s1.pt --only nodes algorithm   # writes algorithm.png
"""
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Patch  # noqa: E402

from analyse import Node, position_names  # noqa: E402

COLOURS = {"specific": "#9ecae1", "combiner": "#fdae6b", "pair": "#a1d99b", "weak": "#e0e0e0", "none": "white"}
CARRIES = ("SC", "SS", "ST", "MB", "MZ", "MT", "NB", "NZ", "NT")


def _purposes(e):
    """Short text of a node's purposes: 'A3: SA SC' per digit; pairs marked '+H2'; weak ones with '?'."""
    per = {}
    for c in e["strong"]:
        d, t = c.split(".", 1)
        per.setdefault(d, []).append(t)
    for c, partner, _ in e["pairs"]:
        d, t = c.split(".", 1)
        per.setdefault(d, []).append(f"{t}+{Node.parse(partner).component}")
    for c in e["weak"]:
        d, t = c.split(".", 1)
        per.setdefault(d, []).append(t + "?")
    out = []
    for d, ts in per.items():
        ts = list(dict.fromkeys(ts))
        cols = [t for t in ts if "(D" in t and "+" not in t and "?" not in t]  # 'ST(D2)': one cascade column
        if len(cols) > 1:  # 'ST(D3)', 'ST(D2)' -> 'ST(D3,2)'
            merged = cols[0].split("(")[0] + "(D" + ",".join(c.split("(D")[1][:-1] for c in cols) + ")"
            ts = [merged if t == cols[0] else t for t in ts if t not in cols[1:]]
        out.append(f"{d}: " + " ".join(ts))
    return out


def draw_algorithm(result, cfg, path, task=None, dpi=130):
    """Draw the discovery `result` (interventions.discover) of a model with Config `cfg` to the PNG `path`.
    Boxes: useful nodes coloured by kind (specific, combiner, only in a pair, weak, none); text: the node,
    the tokens its attention reads most (>= 20%), its purposes per answer digit. Arrows: from a node with a
    carry/borrow purpose (SC SS ST MB MZ MT NB NZ NT) for A_k to the position that predicts A_k, when that
    is later. Returns the path."""
    n, H = cfg.n_digits, cfg.n_heads
    names = position_names(n, task or result["task"])
    nodes = result["nodes"]
    positions = sorted({e["position"] for e in nodes.values()}
                       | {3 * n + 2 - int(c.split(".")[0][1:]) for e in nodes.values() for c in e["strong"]})
    x_of = {p: i for i, p in enumerate(positions)}
    slots = H + 1                                   # heads, then the MLP, inside each layer
    w, h = 1.0, 1.0 / slots
    fig, ax = plt.subplots(figsize=(1.55 * len(positions) + 1, 1.1 * slots * cfg.n_layers + 1.6))
    where = {}
    for name, e in nodes.items():
        nd = Node.parse(name)
        x, y = x_of[nd.position], nd.layer + (H if nd.is_mlp else nd.head) * h
        where[name] = (x + 0.5 * w, y + 0.5 * h)
        ax.add_patch(FancyBboxPatch((x + 0.04, y + 0.01), w - 0.08, h - 0.02, boxstyle="round,pad=0,rounding_size=0.02",
                                    fc=COLOURS[e["category"]], ec="grey", lw=0.6))
        reads = " ".join(names[p] for p, pct in e["attends"] if pct >= 20 and p < len(names))
        text = [nd.component + (f"  reads {reads}" if reads else "")]
        text += [w for line in _purposes(e) for w in textwrap.wrap(line, 30, subsequent_indent="  ")]
        if len(text) > 5:
            text = text[:4] + ["  ..."]
        ax.text(x + 0.08, y + h - 0.03, "\n".join(text), fontsize=5.2, va="top", ha="left", family="monospace")
    for name, e in nodes.items():
        nd = Node.parse(name)
        targets = {int(c.split(".")[0][1:]) for c in e["strong"] + [c for c, _, _ in e["pairs"]]
                   if c.split(".", 1)[1][:2] in CARRIES}
        for k in targets:
            p = 3 * n + 2 - k
            if p > nd.position and p in x_of:
                ax.annotate("", xy=(x_of[p] + 0.5, cfg.n_layers + 0.05), xytext=where[name],
                            arrowprops=dict(arrowstyle="->", color="tab:red", lw=0.7, alpha=0.6,
                                            connectionstyle="arc3,rad=-0.25"))
    for p, x in x_of.items():  # the answer each position predicts, above the top layer
        k = 3 * n + 2 - p
        if 0 <= k <= n + 1:
            ax.text(x + 0.5, cfg.n_layers + 0.12, "sign" if k == n + 1 else f"A{k}", ha="center", fontsize=8,
                    weight="bold")
    for layer in range(1, cfg.n_layers):
        ax.axhline(layer, color="black", lw=0.5, ls=":")
    ax.set_xlim(0, len(positions))
    ax.set_ylim(0, cfg.n_layers + 0.35)
    ax.set_xticks([x + 0.5 for x in range(len(positions))],
                  [f"P{p}\n{names[p]}" for p in positions], fontsize=7)
    ax.set_yticks([layer + 0.5 for layer in range(cfg.n_layers)], [f"layer {layer}" for layer in range(cfg.n_layers)])
    ax.set_xlabel("position (the token there); the bold label above a column is the answer token it predicts")
    sh = result["shares"]
    ax.set_title(f"Verified algorithm: purpose for {sh['heads']['strong']}/{sh['heads']['useful']} useful heads, "
                 f"{sh['MLPs']['strong']}/{sh['MLPs']['useful']} useful MLPs (red arrows: carry/borrow paths)",
                 fontsize=9)
    ax.legend(handles=[Patch(fc=c, ec="grey", label=k) for k, c in COLOURS.items()], fontsize=6, ncol=5,
              loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
