"""
The figures of the report, each a small function that takes tensors, labels and cell texts and returns a
matplotlib Figure (so it can be tested without files; `save` writes it as a PNG), and the quanta-map
section of report.md, which is mostly figures.

    fig = quanta_map({("L0H1", "D'2"): ("42%", 4)}, ["L0H1"], ["D'2"], paled("winter", 10), "failure %")

Quanta maps are the reference notebook's: one cell per useful node (row: the head or MLP, column: its
position), coloured by what its ablation breaks. Left out on purpose: interactive viewers (the notebook's
CircuitsVis and ipywidgets): a PNG works in any Markdown viewer and on a machine without a browser.
"""
import os
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only: this module never opens a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

import data  # noqa: E402
import evaluate  # noqa: E402
from analyse import MAJOR, Node, answer_labels, impact_digits, position_names, tag_values  # noqa: E402

# The reference's "green to yellow" map: dark green for focused / simple / low, yellow for diffuse / hard / high.
GREEN_YELLOW = LinearSegmentedColormap.from_list("green_yellow", ["#006400", "#ffff00"])
EMPTY = "#eeeeee"  # light grey: a node that is not useful


def paled(cmap, shades):
    """`shades` evenly spaced colours of `cmap`, each mixed half with white so black text stays readable."""
    cm = plt.get_cmap(cmap) if isinstance(cmap, str) else cmap
    return [tuple(0.5 * c + 0.5 for c in cm(i / max(1, shades - 1))[:3]) for i in range(shades)]


def quanta_map(cells, rows, cols, colors, title, max_width=6, fontsize=9, legend=None, col_labels=None):
    """A quanta map (the reference notebook's): rows are `L0H0 .. L0MLP, L1H0 ..`, columns are position names.

    cells: {(row, col): (text, colour index)}. Only rows and columns holding a cell are drawn; missing
    cells are grey. The colour index is clamped into the palette, so no value can overflow it
    (the reference crashed on a 100% failure and on `M4+`). legend: one label per colour, drawn as a key
    under the map; col_labels: {col: tick label} (e.g. the token and the answer token it predicts)."""
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
    ax.set_xticks([j + 0.5 for j in range(len(cols))], [(col_labels or {}).get(c, c) for c in cols])
    ax.set_yticks([i + 0.5 for i in range(len(rows))], rows)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if not rows:
        ax.text(0.5, 0.5, "no useful nodes", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=10, pad=28 if col_labels else 18)
    if legend and rows:
        keys = [Patch(facecolor=c, edgecolor="grey", label=k) for c, k in zip(colors, legend)]
        ax.legend(handles=keys + [Patch(facecolor=EMPTY, label="not useful")], loc="upper center", fontsize=6,
                  bbox_to_anchor=(0.5, 0), ncol=min(len(keys) + 1, 6), frameon=False)
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


def save(fig, folder, filename, dpi=110):
    """Write a figure as `folder/filename` (PNG) and close it; returns the Markdown that shows it."""
    fig.savefig(os.path.join(folder, filename), dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return f"![{filename}]({filename})"


COLOURS = ["tab:red", "tab:green", "tab:blue"]  # the three classes of a PCA panel


def plot_pca(panels, cols=4):
    """panels: dicts {proj (N, 2), labels (N,) in 0..2, classes [3 names], evr [2 shares of variance], title}.
    One scatter each, PC1 against PC2, the axes labelled with the share of variance each explains."""
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, pnl in zip(axes.flat, panels):
        for c in range(3):
            pts = pnl["proj"][pnl["labels"] == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=6, c=COLOURS[c], label=pnl["classes"][c])
        ax.set_title(pnl["title"], fontsize=8)
        ax.set_xlabel(f"PC1 ({100 * pnl['evr'][0]:.0f}% of variance)", fontsize=7)
        ax.set_ylabel(f"PC2 ({100 * pnl['evr'][1]:.0f}%)", fontsize=7)
        ax.tick_params(labelsize=6)
    axes.flat[0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig


def plot_neurons(acts, views, titles):
    """One scatter per neuron: activation against its digit's column value, coloured by carry in."""
    cols = min(4, len(acts))
    rows = (len(acts) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(acts):]:
        ax.axis("off")
    for ax, act, (x, c, xlabel), title in zip(axes.flat, acts, views, titles):
        for v, colour in ((0, "tab:blue"), (1, "tab:orange")):
            ax.scatter(x[c == v], act[c == v], s=5, c=colour, label=f"carry/borrow in {v}")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=7)
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    return fig

# ----------------------------------------------------------------------------- quanta maps


def fail_perc(tags):
    """A node's FailPerc tag as an int: the % of questions its ablation breaks (truncated)."""
    return int(tag_values(tags, "FailPerc")[0])


def join(words):
    """['a', 'b', 'c'] -> 'a, b and c'."""
    words = list(words)
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def impact_text(digits, n_digits):
    """{0, 1, 2, 5} -> 'A0..2,5': runs of three or more digits are shortened, as in the reference
    notebook's impact map; two neighbours are written together ('A45') unless a label can have two
    figures (9+ digit models: 'A9,10'), as in analyse.impact_value."""
    digits, parts, i = sorted(digits), [], 0
    glue = "," if n_digits + 1 > 9 else ""
    while i < len(digits):
        j = i
        while j + 1 < len(digits) and digits[j + 1] == digits[j] + 1:
            j += 1
        parts.append(f"{digits[i]}..{digits[j]}" if j - i >= 2 else glue.join(map(str, digits[i:j + 1])))
        i = j + 1
    return "A" + ",".join(parts)


def map_cells(nodes, names, kind, n_digits):
    """{(row, column): (text, colour index)} of one quanta map: kind is fail, attention, impact, Add, Sub or Neg."""
    cells = {}
    for nd, tags in nodes.items():
        key, text, index = (nd.component, names[nd.position]), None, 0
        if kind == "fail":
            v = fail_perc(tags)
            text, index = ("<1%" if v == 0 else f"{v}%"), v // 10
        elif kind == "attention" and not nd.is_mlp:
            attn = [(int(k), int(v)) for k, v in (a.split("=") for a in tag_values(tags, "Attn"))]
            text, index = " ".join(names[k] for k, _ in attn), 10 - sum(v for _, v in attn) // 10
        elif kind == "impact":
            digits = impact_digits(tag_values(tags, "Impact")[0], n_digits)
            text, index = (impact_text(digits, n_digits), min(digits)) if digits else (None, 0)
        elif kind in MAJOR.values() and tag_values(tags, kind):
            order = [c for c in data.COMPLEXITY if MAJOR[c[0]] == kind]
            text = min(tag_values(tags, kind), key=order.index)
            index = order.index(text)
        if text:
            cells[key] = (text, index)
    return cells


def step_maps(run):
    """The quanta maps of the useful nodes: markdown, and {kind: [{node, row, column, text, colour}]}."""
    cfg, names, nodes = run.cfg, position_names(run.n, run.task), run.nodes
    rows = [Node(0, layer, h).component for layer in range(cfg.n_layers) for h in [*range(cfg.n_heads), None]]
    cols = [names[p] for p in sorted({nd.position for nd in nodes})]
    read = data.logit_slice(run.n)  # positions whose logits are answer tokens: label them with what they predict
    labels = {names[p]: f"{names[p]}\n\u2192{names[p + 1]}" for p in range(read.start, read.stop)}
    classes = {m: [c for c in data.COMPLEXITY if MAJOR[c[0]] == m] for m in MAJOR.values()}
    gy = GREEN_YELLOW
    maps = [("fail", "failure %: questions broken by ablating the node", paled("winter", 10),
             [f"{10 * i}-{10 * i + 9}%" for i in range(9)] + ["90-100%"]),
            ("attention", "attention: positions a head attends (green: focused)", paled(gy, 10),
             [f"shown keys {100 - 10 * i}%" for i in range(10)])]
    ops = evaluate.ops_of(run.task)
    if "add" in ops:
        maps.append(("Add", "minimum addition complexity broken", paled(gy, 6), classes["Add"]))
    if "sub" in ops:
        maps += [("Sub", "minimum subtraction complexity broken", paled(gy, 5), classes["Sub"]),
                 ("Neg", "minimum negative-answer complexity broken", paled(gy, 4), classes["Neg"])]
    maps.append(("impact", "answer digits impacted (colour: the lowest)", paled(gy, run.n + 2),
                 [f"A{i}" for i in range(run.n + 1)] + [f"sign (A{run.n + 1})"]))
    md, found = ["## Quanta maps", _maps_text(run, nodes, names)], {}
    for kind, title, colors, legend in maps:
        cells = map_cells(nodes, names, kind, run.n)
        fig = quanta_map(cells, rows, cols, colors, f"{run.task}: {title} ({run.name})", legend=legend,
                         col_labels=labels)
        md.append(save(fig, run.out, f"map_{kind.lower()}.png"))
        found[kind] = [dict(node=nd.name, row=nd.component, column=names[nd.position], text=cells[key][0],
                            colour=cells[key][1]) for nd in nodes if (key := (nd.component, names[nd.position])) in cells]
    return "\n\n".join(md), found


def _maps_text(run, nodes, names):
    """Per position, which answer digits its nodes impact; per operation, the simplest class each node serves."""
    text = ("Rows are nodes (`L0H0` .. `L0MLP`, `L1H0` ..), columns the useful positions, named after the "
            "token there and, for a position whose logits are read, the answer token it predicts (`A5 \u2192A4`: "
            "the node at the A5 token computes A4); grey cells are nodes whose ablation breaks nothing; each map's "
            "key gives its colours. ")
    impacts = {}
    for nd, tags in nodes.items():
        impacts.setdefault(nd.position, set()).update(impact_digits(tag_values(tags, "Impact")[0], run.n))
    first, labels = data.logit_slice(run.n).start, answer_labels(run.n)
    answer = [p for p in sorted(impacts) if p >= first]
    on_time = [p for p in answer if impacts[p] == {int(labels[p - first])}]  # impacts only what it predicts
    if answer and on_time == answer:
        text += (f"Along the answer, the nodes at each position from {names[answer[0]]} to {names[answer[-1]]} "
                 f"impact only the token that position predicts (the next one): every answer digit is "
                 f"computed just in time, in the one position before it is written. ")
    elif answer:
        text += "Along the answer: " + "; ".join(f"the nodes at {names[p]} (predicting {names[p + 1]}) impact "
                                                 f"{impact_text(impacts[p], run.n)}" for p in answer) + ". "
    early = [p for p in sorted(impacts) if p < first]
    if early:
        text += (f"The nodes at {join(names[p] for p in early)} work before the answer starts: they impact "
                 f"{impact_text(set().union(*(impacts[p] for p in early)), run.n)}, so they prepare values that "
                 f"later positions use, such as a {'carry' if run.task == 'add' else 'carry or borrow'} that must be known before its "
                 f"digit is written. ")
    for major in [m for m in MAJOR.values() if any(tag_values(tags, m) for tags in nodes.values())]:
        order = [c for c in data.COMPLEXITY if MAJOR[c[0]] == major]
        mins = [min(tag_values(tags, major), key=order.index) for tags in nodes.values() if tag_values(tags, major)]
        counts = {c: mins.count(c) for c in order if c in mins}
        text += (f"{major}: the simplest class whose questions a node breaks is " +
                 ", ".join(f"{c} for {k} node{'s' * (k > 1)}" for c, k in counts.items()) +
                 f" ({order[0]} nodes matter even for the simplest questions of this kind, the others only "
                 f"for harder ones, with longer {'carry' if major == 'Add' else 'borrow'} cascades). ")
    return text + (f"Colours of the impact map follow the lowest digit impacted; the sign counts as "
                   f"A{run.n + 1}.")
