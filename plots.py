"""
The figures of analyse.py: small functions that take tensors, labels and cell texts and return a matplotlib
Figure; the caller saves it as a PNG (`fig.savefig(path)`), so every function can be tested without files.

    fig = quanta_map({("L0H1", "D'2"): ("42%", 4)}, ["L0H1"], ["D'2"], paled("winter", 10), "failure %")

Left out on purpose: interactive viewers (the reference's CircuitsVis and ipywidgets); a PNG works in any
Markdown viewer and on a machine without a browser.
"""
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only: this module never opens a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

# The reference's "green to yellow" map: dark green for focused / simple / low, yellow for diffuse / hard / high.
GREEN_YELLOW = LinearSegmentedColormap.from_list("green_yellow", ["#006400", "#ffff00"])
EMPTY = "#eeeeee"  # light grey: a node that is not useful


def paled(cmap, shades):
    """`shades` evenly spaced colours of `cmap`, each mixed half with white so black text stays readable."""
    cm = plt.get_cmap(cmap) if isinstance(cmap, str) else cmap
    return [tuple(0.5 * c + 0.5 for c in cm(i / max(1, shades - 1))[:3]) for i in range(shades)]


def quanta_map(cells, rows, cols, colors, title, max_width=6, fontsize=9):
    """A grid of nodes (SPEC 4.10): rows are `L0H0 .. L0MLP, L1H0 ..`, columns are position names.

    cells: {(row, col): (text, colour index)}. Only rows and columns holding a cell are drawn; missing
    cells are grey. The colour index is clamped into the palette, so no value can overflow it
    (the reference crashed on a 100% failure and on `M4+`)."""
    rows = [r for r in rows if any((r, c) in cells for c in cols)]
    cols = [c for c in cols if any((r, c) in cells for r in rows)]
    fig, ax = plt.subplots(figsize=(max(3.5, 0.7 * len(cols) + 1.3), max(1.8, 0.65 * len(rows) + 1.2)))
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            text, index = cells.get((r, c), ("", None))
            color = EMPTY if index is None else colors[min(max(int(index), 0), len(colors) - 1)]
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor=color, edgecolor="white", lw=1.5))
            if text:  # smaller font for longer texts, as in the reference
                size = fontsize - (1 if len(text) == 4 else 2 if len(text) >= 5 else 0)
                ax.text(j + 0.5, i + 0.5, "\n".join(textwrap.wrap(text, max_width)), ha="center",
                        va="center", fontsize=size)
    ax.set_xlim(0, max(1, len(cols)))
    ax.set_ylim(max(1, len(rows)), 0)  # row 0 (L0H0) at the top
    ax.set_xticks([j + 0.5 for j in range(len(cols))], cols)
    ax.set_yticks([i + 0.5 for i in range(len(rows))], rows)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if not rows:
        ax.text(0.5, 0.5, "no useful nodes", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=10, pad=18)
    fig.tight_layout()
    return fig


def attention_grid(patterns, labels, title, query_labels=None):
    """patterns (L, H, Q, K): one row of heads side by side per layer; `labels` name the key positions
    (and the queries unless `query_labels` is given). The causal mask shows as the white upper triangle."""
    L, H, Q, K = patterns.shape
    fig, axes = plt.subplots(L, H, figsize=(3.2 * H + 0.8, 3.2 * L + 0.5), squeeze=False, layout="constrained")
    for layer in range(L):
        for head in range(H):
            ax = axes[layer, head]
            im = ax.imshow(patterns[layer, head].float().cpu().numpy(), cmap="Blues", vmin=0, vmax=1)
            ax.set_title(f"L{layer}H{head}", fontsize=9)
            ax.set_xticks(range(K), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(Q), query_labels or labels, fontsize=6)
            if layer == L - 1:
                ax.set_xlabel("key (attended to)", fontsize=7)
            if head == 0:
                ax.set_ylabel("query (attending)", fontsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="attention")
    fig.suptitle(title, fontsize=10)
    return fig


def position_bars(percs, labels, title):
    """Failure % per position (position ablation); bars above zero mark the useful positions."""
    percs = [float(v) for v in percs]
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(labels) + 1), 3))
    ax.bar(range(len(percs)), percs, color=["#2c7fb8" if v > 0 else "#cccccc" for v in percs])
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    ax.set(ylabel="questions broken (%)", ylim=(0, 100), title=title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
