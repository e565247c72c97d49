"""
The project's tests: `python test_all.py` (or `pytest test_all.py`), a few minutes on a laptop CPU.

Three kinds, as in micrograd: against an oracle (PyTorch's own attention and LayerNorm, Python integers),
against expected values (the hand-made question sets), and smoke runs (a tiny model must learn).
"""
import functools
import os
import signal
import sys
import tempfile
import time

import torch

import artefacts
import data
import evaluate
import train
from model import CheckpointError, Config, Transformer, layer_norm_by_hand, load_model, save_model

torch.set_num_threads(1)  # tiny models: one thread is fastest and deterministic
HERE = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def tiny_model(task="add", n_digits=2, steps=500):
    """A small model trained once per test run (cached): 2-layer, 3-head, d_model 48."""
    cfg = Config(n_digits=n_digits, n_layers=2, n_heads=3, d_model=48, d_head=16, d_mlp=192)
    tc = train.TrainConfig(task=task, n_digits=n_digits, steps=steps, batch_size=128, lr=3e-3, seed=0)
    model = Transformer(cfg, torch.Generator().manual_seed(0))
    train.train(model, tc, progress=False)
    return model

# ============================================================================= core (model, data, train)


def small_model(seed=0, **kw):
    cfg = Config(**{**dict(n_digits=3, n_layers=2, n_heads=3, d_model=32, d_head=12, d_mlp=64), **kw})
    return Transformer(cfg, torch.Generator().manual_seed(seed)).eval()


def test_attention_matches_pytorch():
    model = small_model()
    tokens = data.random_batch("add", 3, 16, torch.Generator().manual_seed(1))
    _, cache = model.run_with_cache(tokens)
    for i in range(model.cfg.n_layers):
        q, k, v = (cache[f"blocks.{i}.attn.hook_{n}"].transpose(1, 2) for n in "qkv")  # (B, H, P, D)
        z = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
        assert torch.allclose(cache[f"blocks.{i}.attn.hook_z"], z, atol=1e-6)
        pattern = cache[f"blocks.{i}.attn.hook_pattern"]
        assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-6)
        assert (pattern.triu(1) == 0).all()  # nothing attends to the future


def test_layernorm_matches_pytorch():
    model = small_model()
    with torch.no_grad():
        model.blocks[0].ln1.w.normal_()
        model.blocks[0].ln1.b.normal_()
    x = torch.randn(4, 13, 32) * 3 + 1
    ln = model.blocks[0].ln1
    assert torch.allclose(ln(x), layer_norm_by_hand(x, ln.w, ln.b, 1e-5), atol=1e-5)
    assert torch.allclose(ln(x), torch.nn.functional.layer_norm(x, (32,), ln.w, ln.b, 1e-5), atol=1e-5)
    y = layer_norm_by_hand(x, torch.ones(32), torch.zeros(32), 1e-5)
    assert torch.allclose(y.mean(-1), torch.zeros(()), atol=1e-5) and torch.allclose(y.var(-1, unbiased=False), torch.ones(()), atol=1e-3)


def test_hook_names_and_shapes():
    model = small_model(d_head=20)  # n_heads * d_head = 60 != d_model = 32 is allowed
    B, P, C, H, D, M = 5, 13, 32, 3, 20, 64
    _, cache = model.run_with_cache(data.random_batch("sub", 3, B, torch.Generator().manual_seed(0)))
    want = {"hook_embed": (B, P, C), "hook_pos_embed": (B, P, C)}
    for i in range(2):
        want.update({f"blocks.{i}.hook_{n}": (B, P, C) for n in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")})
        want.update({f"blocks.{i}.attn.hook_{n}": (B, P, H, D) for n in "qkvz"})
        want.update({f"blocks.{i}.attn.hook_{n}": (B, H, P, P) for n in ("attn_scores", "pattern")})
        want[f"blocks.{i}.attn.hook_result"] = (B, P, H, C)
        want.update({f"blocks.{i}.mlp.hook_{n}": (B, P, M) for n in ("pre", "post")})
    assert {k: tuple(v.shape) for k, v in cache.items()} == want


def test_noop_and_replacing_hooks():
    model = small_model()
    tokens = data.random_batch("add", 3, 8, torch.Generator().manual_seed(0))
    clean = model(tokens)
    seen = []
    noop = model.run_with_hooks(tokens, [(lambda n: "result" not in n, lambda x, hook: seen.append(hook.name))])
    assert torch.equal(clean, noop) and len(seen) == len(model.hook_dict) - 2
    # hooking hook_result makes the model sum per-head outputs itself: equal up to float rounding
    same = model.run_with_hooks(tokens, [(lambda n: n.endswith("hook_result"), lambda x, hook: x.clone())])
    assert torch.allclose(clean, same, atol=1e-5)
    zeroed = model.run_with_hooks(tokens, [("blocks.1.mlp.hook_post", lambda x, hook: torch.zeros_like(x))])
    assert not torch.allclose(clean, zeroed)
    assert torch.equal(model(tokens, data.logit_slice(3)), clean[:, data.logit_slice(3)])


def test_hooks_removed_after_exception():
    model = small_model()
    def boom(x, hook):
        raise RuntimeError("boom")
    try:
        model.run_with_hooks(torch.zeros(2, 13, dtype=torch.long), [("blocks.0.attn.hook_z", boom)])
    except RuntimeError:
        pass
    assert all(not hp.fns for hp in model.hook_dict.values())
    try:
        model.run_with_cache(torch.zeros(2, 13, dtype=torch.long), names=["no.such.hook"])
        assert False, "an unknown hook name must raise"
    except KeyError:
        pass


def test_generated_questions_are_right():
    for n in range(1, data.MAX_DIGITS + 1):
        for task in ("add", "sub", "mix"):
            gen = torch.Generator().manual_seed(n)
            for enrichment in (True, False):
                tokens = data.random_batch(task, n, 200, gen, enrichment=enrichment)
                assert tokens.shape == (200, 3 * n + 4)
                for q in data.decode(tokens[:40]) + data.decode(tokens[-40:]):
                    a, op, b, ans = q[:n], q[n], q[n + 1:2 * n + 1], q[2 * n + 2:]
                    assert q[2 * n + 1] == "=" and len(ans) == n + 2
                    assert int(ans) == (int(a) + int(b) if op == "+" else int(a) - int(b)), q
                    assert data.decode(data.encode(q)) == q
    for bad in (0, 11):
        try:
            data.check_digits(bad)
            assert False
        except ValueError as e:
            assert "1 to 10" in str(e)


def test_enrichment_makes_cascades_common():
    gen = torch.Generator().manual_seed(0)
    plain = torch.cat([data.random_batch("add", 5, 1000, gen, enrichment=False) for _ in range(20)])
    rich = torch.cat([data.random_batch("add", 5, 1000, gen) for _ in range(20)])
    s4 = lambda t: (data.complexity(t, 5) >= 4).float().mean()  # noqa: E731
    assert s4(rich) > 5 * s4(plain)


def test_short_operands_only_zero_top_digits():
    reference = data.random_batch("add", 5, 500, torch.Generator().manual_seed(0))
    assert torch.equal(reference, data.random_batch("add", 5, 500, torch.Generator().manual_seed(0), p_short=0))
    for op in ("add", "sub"):
        short = data.random_batch(op, 5, 2000, torch.Generator().manual_seed(0), p_short=0.5)
        for q in data.decode(short[:50]):  # answers stay right
            assert int(q[12:]) == (int(q[:5]) + int(q[6:11]) if op == "add" else int(q[:5]) - int(q[6:11])), q
        both_top_zero = (short[:, 0] == 0) & (short[:, 6] == 0)  # first digit of each operand
        assert 0.4 < both_top_zero.float().mean() < 0.6  # 50% shortened (+1% by chance)
        x, y = torch.ones(4, 1, dtype=torch.long), torch.ones(4, 1, dtype=torch.long)
        data.shorten(x, y, torch.Generator().manual_seed(0), 1.0)  # one digit: nothing to shorten
        assert x.sum() == 4 and y.sum() == 4


def test_complexity_of_handmade_sets():
    for n in (5, 6):
        for name, tokens in data.named_sets("mix", n).items():
            labels = {data.COMPLEXITY[c] for c in data.complexity(tokens, n).tolist()}
            if name in ("Add.SN",):
                assert labels <= {"S0", "S1"}
            elif name == "Sub.NG":
                assert all(lb.startswith("N") for lb in labels)
            elif not name.endswith("rule"):
                assert labels == {name[4:]}, (name, labels)
    cls = lambda q: data.COMPLEXITY[data.complexity(data.encode(q)[None], len(q) // 3 - 1)[0]]  # noqa: E731
    assert [cls("44445+55555=+100000"), cls("00015+00045=+000060"), cls("00000+00000=+000000")] == ["S5", "S1", "S0"]
    assert [cls("10000-00001=+009999"), cls("00001-00002=-000001"), cls("99999-99999=+000000")] == ["M4+", "N1", "M0"]


def test_named_sets_drop_what_does_not_fit():
    sets = data.named_sets("add", 2)
    assert all(int(q[:2]) < 100 for q in data.decode(sets["Add.S1"]))
    assert len(data.named_sets("add", 5)["Add.S0"]) == 21 and len(data.named_sets("add", 6)["Add.S0"]) == 24
    rule = data.decode(data.named_sets("sub", 5)["Sub.rule"])
    assert "10000-00001=+009999" in rule and "00000-99999=-099999" in rule


def test_same_seed_same_batches_and_losses():
    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        model = Transformer(Config(n_digits=2, n_layers=1, n_heads=2, d_model=16, d_head=8, d_mlp=32),
                            torch.Generator().manual_seed(seed))
        tc = train.TrainConfig(task="mix", n_digits=2, steps=5, batch_size=16, seed=seed)
        return data.random_batch("mix", 2, 16, gen), train.train(model, tc, progress=False)["loss"]
    (b1, l1), (b2, l2), (b3, l3) = run(3), run(3), run(4)
    assert torch.equal(b1, b2) and l1 == l2
    assert not torch.equal(b1, b3) and l1 != l3


def test_lr_schedule():
    f = [train.lr_factor(s, 100) for s in range(100)]
    assert abs(f[0] - 0.01) < 1e-9 and abs(f[20] - 1) < 1e-9 and f[99] < 0.01
    assert all(a <= b for a, b in zip(f[:20], f[1:21])) and all(a >= b for a, b in zip(f[20:], f[21:]))


def test_answer_loss_reads_only_answers():
    tokens = data.random_batch("add", 3, 4, torch.Generator().manual_seed(0))
    logits = torch.zeros(4, 13, 15)
    logits[:, data.logit_slice(3)] = torch.nn.functional.one_hot(tokens[:, data.answer_slice(3)], 15) * 50.0
    logits[:, :7] = torch.randn(4, 7, 15)  # question positions: no influence on the loss
    assert evaluate.answer_nll(logits, tokens, 3).max() < 1e-12
    assert evaluate.answer_nll(logits, tokens, 3).dtype == torch.float64


def test_checkpoint_round_trip_and_errors():
    model = small_model(seed=5)
    tokens = data.random_batch("add", 3, 8, torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.pt")
        save_model(path, model, task="add", seed=5, steps=0)
        loaded, info = load_model(path)
        assert torch.equal(loaded(tokens), model(tokens)) and info["task"] == "add" and loaded.cfg == model.cfg
        assert [f for f in os.listdir(d)] == ["m.pt"]  # no temp file left behind
        with open(os.path.join(d, "bad.pt"), "wb") as f:
            f.write(b"not a checkpoint")
        torch.save({"state_dict": {"x": torch.zeros(1)}, "config": model.cfg.__dict__ | {}}, os.path.join(d, "shape.pt"))
        for name, words in [("missing.pt", "no such"), ("bad.pt", "not a readable"), ("shape.pt", "does not fit")]:
            try:
                load_model(os.path.join(d, name))
                assert False, name
            except CheckpointError as e:
                assert name in str(e) and words in str(e) and "\n" not in str(e)


def reference_forward(sd, tokens, n_layers):
    """An independent TransformerLens-semantics forward pass written with einsums from a state dict."""
    def ln(x, w, b):
        x = x - x.mean(-1, keepdim=True)
        return x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * w + b
    x = sd["embed.W_E"][tokens] + sd["pos_embed.W_pos"][: tokens.shape[1]]
    P = tokens.shape[1]
    for i in range(n_layers):
        p = lambda k: sd[f"blocks.{i}.{k}"]  # noqa: E731
        h = ln(x, p("ln1.w"), p("ln1.b"))
        q, k, v = (torch.einsum("bpc,hcd->bphd", h, p(f"attn.W_{n}")) + p(f"attn.b_{n}") for n in "QKV")
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
        s = torch.where(torch.ones(P, P).tril().bool(), s, torch.tensor(-1e5))  # TL's IGNORE value
        z = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)
        x = x + torch.einsum("bqhd,hdc->bqc", z, p("attn.W_O")) + p("attn.b_O")
        h = torch.relu(ln(x, p("ln2.w"), p("ln2.b")) @ p("mlp.W_in") + p("mlp.b_in"))
        x = x + h @ p("mlp.W_out") + p("mlp.b_out")
    return ln(x, sd["ln_final.w"], sd["ln_final.b"]) @ sd["unembed.W_U"] + sd["unembed.b_U"]


def test_load_transformer_lens_state_dict():
    src = small_model(seed=7, n_heads=4, d_head=10)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-trivial biases and LayerNorm weights
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    for i in range(2):  # the buffers TransformerLens saves
        sd[f"blocks.{i}.attn.mask"] = torch.ones(13, 13).tril().bool()
        sd[f"blocks.{i}.attn.IGNORE"] = torch.tensor(-1e5)
    tokens = data.random_batch("mix", 3, 8, torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "tl.pth")
        torch.save(sd, path)
        model, info = load_model(path)
    assert model.cfg.n_digits == 3 and model.cfg.n_heads == 4 and model.cfg.d_head == 10 and info["source"] == "transformer_lens"
    assert torch.allclose(model(tokens), reference_forward(sd, tokens, 2), atol=1e-4)


def run_cli(*args, script="train.py"):
    import subprocess
    r = subprocess.run([sys.executable, os.path.join(HERE, script), *args], capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


def cli_error(main, args):
    """Run a CLI's main() in-process; return the one-line message it exits with (argparse-style)."""
    import contextlib
    import io
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main(args)
    except SystemExit as e:
        msg = e.code if isinstance(e.code, str) else err.getvalue()
        return msg.strip()
    raise AssertionError(f"{args} did not fail")


def test_cli_bad_input_is_one_line():
    with tempfile.TemporaryDirectory() as d:
        corrupt = os.path.join(d, "corrupt.pt")
        with open(corrupt, "w") as f:
            f.write("garbage")
        for args in (["--digits", "0"], ["--digits", "11"], ["--steps", "-1"], ["--task", "mul"], ["--preset", "nope"],
                     ["--checkpoint", os.path.join(d, "missing.pt")], ["--checkpoint", corrupt], ["--lr", "abc"],
                     ["--device", "tpu"], ["--perc-sub", "120"], ["--verify", "0"], ["--short-operands", "2"],
                     ["--preset", "ins1_mix_d6_l3_h4_t40K"]):
            msg = cli_error(train.main, args + ["--out", d])
            assert msg.startswith("train.py: error:"), (args, msg)
            assert len(msg.splitlines()) == 1, (args, msg)
        code, out, err = run_cli("--checkpoint", corrupt)  # and as a real process: one line, no traceback
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and "corrupt.pt" in err


def test_smoke_tiny_model_learns_two_digit_addition():
    t = time.time()
    model = tiny_model("add", 2, 600)
    results = evaluate.verify(model, "add", 2, "all", progress=False)
    assert time.time() - t < 60
    assert results["add all"]["correct"] >= 0.99 * 10_000, evaluate.report(results)


def test_verify_checks_each_operation_of_a_mixed_task():
    class Oracle(torch.nn.Module):  # answers addition perfectly and subtraction never
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, tokens, read=slice(None)):
            logits = torch.nn.functional.one_hot(tokens[:, 1:], 15).float() * 10  # (B, P-1, V): the next token
            logits[tokens[:, 2] == data.MINUS] *= -1
            return torch.cat([logits, logits[:, :1]], 1)[:, read]
    results = evaluate.verify(Oracle(), "mix", 2, 3000, progress=False)
    assert results["add uniform"]["correct"] == results["add uniform"]["questions"] == 3000
    assert results["sub uniform"]["correct"] == 0 and results["sub uniform"]["questions"] == 3000
    assert set(results["Sub.rule"]["by_class"]) >= {"M0", "N1"} and results["Sub.rule"]["correct"] == 0


def test_cli_trains_and_verifies_a_checkpoint():
    with tempfile.TemporaryDirectory() as d:
        code, out, err = run_cli("--digits", "1", "--steps", "30", "--d-model", "16", "--d-head", "8", "--batch-size", "32",
                                 "--verify", "all", "--out", d, "--no-progress")
        assert code == 0, err
        names = sorted(os.listdir(d))
        assert names == ["add_d1_l2_h3_t30_s1.json", "add_d1_l2_h3_t30_s1.pt", "add_d1_l2_h3_t30_s1_loss.png"], names
        code, out, err = run_cli("--checkpoint", os.path.join(d, names[1]), "--verify", "all", "--no-progress")
        assert "add all" in out and code in (0, 1)
        code, out, err = run_cli("--checkpoint", os.path.join(d, names[1]), "--task", "sub")
        assert code != 0 and "is a add model" in err

# ============================================================================= analyse (issue 4)


def _analysed(n_questions=128):
    """The 2-digit tiny model, its varied questions and their per-layer means."""
    import analyse
    model = tiny_model("add", 2, 600)
    tokens = analyse.varied_questions("add", 2, torch.Generator().manual_seed(0), n_questions)
    return model, tokens, analyse.layer_means(model, tokens)


def test_analyse_ablating_an_unused_node_changes_nothing():
    import analyse
    model, tokens, means = _analysed()
    cfg, read, last = model.cfg, data.logit_slice(2), model.cfg.n_ctx - 1
    # The last position (A0) predicts nothing that is read, and no position after it can attend to it:
    # ablating every head, every MLP and the residual stream there must leave the answer logits bit-identical.
    nodes = [dict(position=last, layer=layer, head=h) for layer in range(cfg.n_layers) for h in range(cfg.n_heads + 1)]
    hooks = [analyse.node_hook(nd, means, "mean", cfg) for nd in nodes] + analyse.position_hooks(last, means, "zero", 2)
    with torch.inference_mode():
        clean = model(tokens)
        with model.hooks(hooks):
            ablated = model(tokens)
    assert torch.equal(clean[:, read], ablated[:, read])
    assert not torch.allclose(clean[:, last], ablated[:, last])  # the hooks did act: position A0 changed
    assert torch.equal(analyse.ablate_nodes(model, tokens, nodes, means).fails, analyse.failures(model, tokens, 2).fails)


def test_analyse_ablating_every_head_at_the_answer_breaks_the_answers():
    import analyse
    model, tokens, means = _analysed()
    cfg, read = model.cfg, data.logit_slice(2)
    nodes = [dict(position=p, layer=layer, head=h) for p in range(read.start, read.stop)
             for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
    before = analyse.failures(model, tokens, 2).fails.float().mean()
    for kind in ("mean", "zero"):
        after = analyse.ablate_nodes(model, tokens, nodes, means, kind).fails.float().mean()
        assert before < 0.05 and after > 0.5, (kind, before, after)


def test_analyse_useful_nodes_tags_and_nodes_json_round_trip():
    import re
    import analyse
    import report
    model, tokens, means = _analysed()
    cfg = model.cfg
    baseline = analyse.failures(model, tokens, 2)
    broken = analyse.position_ablation(model, tokens, means, "mean", baseline)  # (P, B)
    positions = broken.any(1).nonzero().flatten().tolist()
    # Nothing computed at A0 is read; every answer digit but the sign (always + here) is computed somewhere.
    assert cfg.n_ctx - 1 not in positions and {7, 8} <= set(positions), positions
    nodes = analyse.find_nodes(model, tokens, positions, means, analyse.mean_patterns(model, tokens), "mean", baseline)
    assert nodes and all(nd["position"] in positions for nd in nodes)
    pattern = r"FailPerc\.\d+|Impact\.A[0-3]+|(Add\.S[0-5])|Attn\.\d+=\d+"
    assert all(re.fullmatch(pattern, t) for nd in nodes for t in nd["tags"]), nodes
    assert all(analyse.tag_values(nd, "Attn") for nd in nodes if nd["head"] < cfg.n_heads)
    assert analyse.node_name(dict(position=7, layer=1, head=3), cfg) == "P7.L1.MLP"
    assert analyse.position_names(2, "add") == ["D1", "D0", "+", "D'1", "D'0", "=", "sign", "A2", "A1", "A0"]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "nodes.json")
        analyse.write_nodes(path, nodes)
        assert analyse.read_nodes(path) == nodes
    names = analyse.position_names(2, "add")
    for kind in ("fail", "attention", "impact", "Add"):
        assert report.map_cells(nodes, cfg, names, kind)
    assert report.impact_text({0, 1, 2, 5}) == "A0..2,5" and report.impact_text({4, 5}) == "A45"


def test_analyse_every_plot_returns_a_figure():
    import matplotlib.figure
    import plots
    figs = [plots.quanta_map({("L0H0", "D1"): ("100%", 10), ("L1MLP", "A2"): ("M4+", 99)}, ["L0H0", "L1MLP"],
                             ["D1", "A2"], plots.paled("winter", 10), "palette indices are clamped"),
            plots.quanta_map({}, ["L0H0"], ["D1"], plots.paled(plots.GREEN_YELLOW, 4), "empty"),
            plots.attention_grid(torch.rand(2, 3, 10, 10).tril(), [str(i) for i in range(10)], "attention"),
            plots.position_bars([0, 50, 100], ["a", "b", "c"], "positions")]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs)
    for f in figs:
        f.savefig(os.devnull, format="png")  # drawing must not fail either
        plots.plt.close(f)


def test_analyse_cli_writes_report_and_nodes():
    import analyse
    model = tiny_model("add", 2, 600)
    with tempfile.TemporaryDirectory() as d:
        path, tl, out = os.path.join(d, "add_d2.pt"), os.path.join(d, "tl.pth"), os.path.join(d, "out")
        save_model(path, model, task="add", seed=0, steps=600)
        assert analyse.main([path, "--out", out, "--questions", "64", "--no-progress", "--only", "accuracy",
                             "attention", "positions", "nodes", "maps"]) == 0
        files = set(os.listdir(out))
        assert {"report.md", "nodes.json", "map_fail.png", "map_impact.png", "positions.png", "attention_mean.png"} <= files
        text = open(os.path.join(out, "report.md")).read()
        assert all(f"![{f}]({f})" in text for f in files if f.endswith(".png"))
        assert "## Useful nodes" in text and "## Quanta maps" in text
        torch.save(model.state_dict(), tl)  # a TransformerLens-style file: it does not say its task
        for args in ([tl], [os.path.join(d, "missing.pt")], [path, "--task", "sub"], [path, "--only", "nope"]):
            msg = cli_error(analyse.main, args + ["--out", out])
            assert msg.startswith("analyse.py: error:") and len(msg.splitlines()) == 1, (args, msg)

# ============================================================================= algorithm (issue 5)


def test_framework_agrees_with_integers_on_every_3_digit_pair():
    import framework
    for op in ("add", "sub"):
        q = evaluate.all_questions(op, 3)                                # all 10^6 pairs
        a, b, _, _ = data.parse_questions(q, 3)
        pred = framework.answer_tokens(*framework.framework_answer(a, b, op, 3))
        assert torch.equal(pred, q[:, data.answer_slice(3)]), op
    # the same functions on plain ints: 457 + 548 cascades a carry through the sum-9 middle column
    st = [framework.tri_case(d, e) for d, e in ((7, 8), (5, 4), (4, 5))]
    assert st == [10, 9, 9] and framework.tri_add(st[1], st[0]) == 10 and framework.tri_add(8, 10) != 10
    assert framework.difference(3, 7) == 6 and framework.tri_case_sub(3, 7) == 10


def test_pairs_differ_only_in_the_subtask_and_predict_a_change():
    import framework
    n, gen = 4, torch.Generator().manual_seed(0)
    for task in ("SA", "SC", "ST", "MD", "MB", "MT", "ND", "NB", "NT", "SGN"):
        for k in framework.subtask_digits(task, n):
            store, alter, want = framework.make_pairs(task, k, n, 50, gen)
            assert len(store) == 50, (task, k)
            truth = alter[:, data.answer_slice(n)]
            changed = (want != truth)
            assert changed.any(1).all() and changed.sum(1).max() == 1, (task, k)
            if task in framework.ADD_TASKS:  # for addition the prediction is the store's digit k
                col = n + 1 - k
                assert torch.equal(want[:, col], store[:, data.answer_slice(n)][:, col])


def test_pca_matches_torch_pca_lowrank_up_to_sign():
    from algorithm import pca
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 3, generator=g) * torch.tensor([5.0, 2.0, 1.0]) @ torch.randn(3, 20, generator=g)
    X = X + 0.01 * torch.randn(200, 20, generator=g) + 3.0           # off-centre, rank ~3
    proj, comps, evr = pca(X, 3)
    U, S, V = torch.pca_lowrank(X, q=3, center=True, niter=6)
    ref = (X - X.mean(0)) @ V                                         # (200, 3)
    for i in range(3):
        sign = torch.sign((proj[:, i] * ref[:, i]).sum())
        assert torch.allclose(proj[:, i], sign * ref[:, i], atol=1e-3), i
    assert torch.allclose(evr, S ** 2 / (X - X.mean(0)).pow(2).sum(), atol=1e-4) and evr[0] > evr[1] > evr[2]


def test_interventions_self_patch_positive_control_and_unused_node():
    import framework
    import interventions as iv
    model, n = tiny_model("add", 2, 600), 2
    store, alter, want = iv.claim_pairs(model, "SA", 0, 60, torch.Generator().manual_seed(1))
    assert len(alter) >= 50
    # patching every node with its own activation changes nothing
    plain = model(alter)[:, data.logit_slice(n)].argmax(-1)
    same = iv.intervene(model, alter, alter, [iv.all_nodes(model.cfg)])[0]
    assert torch.equal(same, plain)
    # every node at the position that predicts A0: its residual becomes the store's, so the claim holds
    last = 3 * n + 2
    assert iv.test_claim(model, store, alter, want, [x for x in iv.all_nodes(model.cfg) if x[0] == last]) \
        == (len(alter), len(alter))
    # position 0 only sees D(n-1), which these pairs share: a claim that it does A0's base add fails
    passes, total = iv.test_claim(model, store, alter, want, [(0, 0, 0)])
    assert passes == 0 and total == len(alter)

# ============================================================================= reuse: growing an adder, and the comparison

TINY_ADD3 = os.path.join(HERE, "checkpoints", "tiny", "add_d3_l2_h3_t1K_s0.pt")  # 3-digit add, 100% on all 10^6


def _reuse_source(n_layers=2, n_heads=3, seed=0, n_digits=2):
    """An untrained source whose every weight, bias and LayerNorm is random (so a missed copy shows)."""
    cfg = Config(n_digits=n_digits, n_layers=n_layers, n_heads=n_heads, d_model=48, d_head=16, d_mlp=192)
    src = Transformer(cfg, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return src.eval()


def test_reuse_insert_copies_every_tensor():
    from dataclasses import replace
    import reuse
    src = _reuse_source()
    cfg = replace(src.cfg, n_layers=3, n_heads=4)
    for late, offset in ((False, 0), (True, 1)):
        fresh = Transformer(cfg, torch.Generator().manual_seed(1))
        model = Transformer(cfg, torch.Generator().manual_seed(1))
        assert reuse.insert(src, model, late=late) == offset
        tgt = dict(model.named_parameters())
        for name, p in src.named_parameters():  # every source tensor, wherever it went
            parts = name.split(".")
            if parts[0] == "blocks":
                parts[1] = str(int(parts[1]) + offset)
            t = tgt[".".join(parts)]
            t = t[:3] if parts[-1] in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V") else t
            assert torch.equal(t, p), f"{name} not copied (late={late})"
        free = 2 if not late else 0  # the layer that receives nothing keeps its own initialisation
        assert torch.equal(model.blocks[free].attn.W_Q, fresh.blocks[free].attn.W_Q)
        assert torch.equal(model.blocks[offset].attn.W_Q[3], fresh.blocks[offset].attn.W_Q[3])
    faithful = Transformer(cfg, torch.Generator().manual_seed(1))
    reuse.insert(src, faithful, faithful=True)  # the reference copies Q/K/V but not W_O, ln2, b_U
    assert torch.equal(faithful.blocks[0].attn.W_Q[:3], src.blocks[0].attn.W_Q)
    assert not torch.equal(faithful.blocks[0].attn.W_O[:3], src.blocks[0].attn.W_O)
    assert not torch.equal(faithful.blocks[1].ln2.w, src.blocks[1].ln2.w)
    assert not torch.equal(faithful.unembed.b_U, src.unembed.b_U)


def test_reuse_preserve_keeps_addition_answers():
    from dataclasses import replace
    import reuse
    src = _reuse_source()
    q = data.random_batch("add", 2, 500, torch.Generator().manual_seed(3))
    read = data.logit_slice(2)
    for late in (False, True):
        diffs = {}
        for preserve in (True, False):
            model = Transformer(replace(src.cfg, n_layers=4, n_heads=5), torch.Generator().manual_seed(2)).eval()
            reuse.insert(src, model, late=late, preserve=preserve)
            with torch.no_grad():
                a, b = src(q)[:, read], model(q)[:, read]  # (B, n+2, V) at the answer positions
            diffs[preserve] = ((a - b).abs().max().item(), torch.equal(a.argmax(-1), b.argmax(-1)))
        assert diffs[True][0] < 1e-5 and diffs[True][1], f"--preserve changed the answers (late={late}): {diffs}"
        assert diffs[False][0] > 1e-2, "without --preserve the new parts should change the logits"


def _train_steps(model, hooks, steps=8):
    tc = train.TrainConfig(task="mix", n_digits=2, steps=steps, batch_size=32, lr=3e-3, weight_decay=0.1, seed=4)
    train.train(model, tc, after_backward=hooks[0], after_step=hooks[1], progress=False)


def test_reuse_freeze_keeps_slices_exact():
    from dataclasses import replace
    import reuse
    src = _reuse_source()
    cfg = replace(src.cfg, n_layers=3, n_heads=4)
    model, off, hooks = reuse.grow(src, cfg, "freeze-all", seed=1, late=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_steps(model, hooks)
    now = model.state_dict()
    for i in (1, 2):  # the inserted layers: heads 0-2, b_O, the MLP and both LayerNorms bit-identical
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
            k = f"blocks.{i}.attn.{name}"
            assert torch.equal(now[k][:3], before[k][:3]), k
            assert not torch.equal(now[k][3], before[k][3]), f"{k}: the new head 3 should train"
        for k in ("attn.b_O", "mlp.W_in", "mlp.b_in", "mlp.W_out", "mlp.b_out", "ln1.w", "ln2.b"):
            assert torch.equal(now[f"blocks.{i}.{k}"], before[f"blocks.{i}.{k}"]), k
    for k in ("blocks.0.attn.W_Q", "blocks.0.mlp.W_in", "embed.W_E", "unembed.W_U"):
        assert not torch.equal(now[k], before[k]), f"{k} should train"

    model, off, hooks = reuse.grow(src, cfg, "freeze-useful", seed=1, useful_heads={(0, 1), (1, 0)})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_steps(model, hooks)
    now = model.state_dict()
    for k, h in (("blocks.0.attn.W_Q", 1), ("blocks.0.attn.W_O", 1), ("blocks.1.attn.b_V", 0), ("blocks.1.attn.W_K", 0)):
        assert torch.equal(now[k][h], before[k][h]), f"{k}[{h}] is frozen"
    assert torch.equal(now["blocks.0.attn.b_O"], before["blocks.0.attn.b_O"])
    for k, h in (("blocks.0.attn.W_Q", 0), ("blocks.1.attn.W_O", 2), ("blocks.0.attn.W_V", 3)):
        assert not torch.equal(now[k][h], before[k][h]), f"{k}[{h}] should train"
    assert not torch.equal(now["blocks.0.mlp.W_in"], before["blocks.0.mlp.W_in"]), "useful MLPs train in freeze-useful"

    # control: masking gradients alone is not enough, AdamW's weight decay still moves the slice
    model, off, _ = reuse.grow(src, cfg, "init", seed=1)
    frz = reuse.Freezer([(model.blocks[0].attn.W_Q, 1)])
    w = model.blocks[0].attn.W_Q[1].detach().clone()
    _train_steps(model, (frz.after_backward, None), steps=3)
    assert not torch.equal(model.blocks[0].attn.W_Q[1], w)


def test_reuse_width_mismatch_is_one_line():
    import subprocess
    import reuse
    src = _reuse_source()
    for kw, word in ((dict(d_model=64), "d_model"), (dict(n_layers=1), "n_layers"), (dict(n_digits=3), "n_digits")):
        try:
            reuse.check_fit(src.cfg, Config(**{**dict(n_digits=2, n_layers=3, n_heads=4, d_model=48, d_head=16,
                                                         d_mlp=192), **kw}))
            raise AssertionError(f"{kw} should not fit")
        except ValueError as e:
            assert word in str(e) and "\n" not in str(e), str(e)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "src.pt")
        save_model(path, src, task="add", steps=10, train={"lr": 3e-3, "batch_size": 32, "weight_decay": 0.1})
        r = subprocess.run([sys.executable, os.path.join(HERE, "reuse.py"), "--from", path, "--d-model", "64"],
                           capture_output=True, text=True, cwd=tmp)
        err = r.stderr.strip()
        assert r.returncode != 0 and "d_model" in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def _save_source(folder, src=None, task="add"):
    """A source checkpoint in `folder`: by default a random 1-digit one (its final checks are small)."""
    path = os.path.join(folder, "src.pt")
    save_model(path, src or _reuse_source(n_digits=1), task=task, steps=10,
               train={"lr": 3e-3, "batch_size": 32, "weight_decay": 0.1})
    return path


def _reuse_main(argv):
    """reuse.main in this process: (exit status, stdout, stderr); a command-line error exits with status 2."""
    import contextlib
    import io
    import reuse
    out, err, threads = io.StringIO(), io.StringIO(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # train.set_threads would give these tiny models every core
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = reuse.main(argv)
        except SystemExit as e:
            rc = e.code
        finally:
            if threads is None:
                del os.environ["OMP_NUM_THREADS"]
            else:
                os.environ["OMP_NUM_THREADS"] = threads
            torch.set_num_threads(1)  # as the tests run
    return rc, out.getvalue(), err.getvalue()


def test_reuse_cli_trains_saves_and_records_the_adder():
    import hashlib
    import json
    with tempfile.TemporaryDirectory() as tmp:
        path = _save_source(tmp)
        src, _ = load_model(path)
        common = ["--from", path, "--any-source", "--steps", "8", "--verify", "100", "--check-every", "4",
                  "--check-questions", "50", "--out", tmp, "--no-progress"]
        rc, log, _ = _reuse_main(common + ["--mode", "freeze-all", "--usage", "10", "--late"])
        assert rc == 0 and "L2MLP" in log  # the node-usage table was printed
        model, info = load_model(os.path.join(tmp, "ins3_mix_d1_l3_h4_t8_s1_late.pt"))
        assert info["insert"]["offset"] == 1 and info["train"]["batch_size"] == 32
        assert len(info["node_usage"]["rows"]) == 8  # 2 inserted layers x (3 heads + MLP)
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]
        assert info["source"] == {"file": "src.pt", "sha256": digest} and tmp not in json.dumps(info)
        changed = info["adder"]["changed"]  # freeze-all alone: the inserted blocks stay, the ends train
        assert {"embed.W_E", "unembed.W_U", "ln_final.w"} <= set(changed), changed
        assert not any(n.startswith("blocks.") for n in changed), changed

        rc, log, _ = _reuse_main(common + ["--mode", "freeze-all", "--freeze-embed", "--preserve", "--usage", "0"])
        assert rc == 0 and "every inserted weight is as in the source" in log
        js = json.load(open(os.path.join(tmp, "ins3_mix_d1_l3_h4_t8_s1_preserve_embed.json")))
        assert js["adder"]["changed"] == [] and set(js["adder"]["after_training"]) >= {"add uniform", "Add.rule"}
        # right after insertion with --preserve the grown model answers additions exactly as the source
        assert js["adder"]["at_insertion"] == evaluate.errors(evaluate.verify(src, "add", 1, 50, 1, progress=False,
                                                                                     sparse_sample=50))
        assert sum(js["adder"]["at_insertion"].values()) > 0  # a random source: the equality above is not 0 == 0


def test_reuse_refuses_a_source_that_cannot_add():
    import reuse
    add3, info = load_model(TINY_ADD3)
    assert reuse.check_source(add3, info) == 1.0
    assert reuse.check_source(add3, {}) == 1.0  # a TransformerLens file records no task: it is scored
    for model, task, says in ((add3, "sub", "is a sub model"), (add3, "mix", "is a mix model"),
                              (_reuse_source(), None, "not an addition model")):
        try:
            reuse.check_source(model, {"task": task} if task else {})
            raise AssertionError(f"{says}: should be refused")
        except ValueError as e:
            assert says in str(e) and "\n" not in str(e), str(e)
    with tempfile.TemporaryDirectory() as tmp:
        sub = _save_source(tmp, task="sub")
        tl = os.path.join(tmp, "tl.pt")
        torch.save(_reuse_source().state_dict(), tl)  # TransformerLens format: weights only, no task
        for path, says in ((sub, "is a sub model"), (tl, "fresh addition questions right")):
            rc, _, err = _reuse_main(["--from", path, "--steps", "8", "--out", tmp])
            assert rc == 2 and says in err and "--any-source" in err and len(err.strip().splitlines()) == 1, err
            assert not os.path.exists(os.path.join(tmp, "ins1_mix_d1_l3_h4_t8_s1.pt"))


def _compare_args(path, tmp, seeds, arms="init,scratch"):
    return ["--from", path, "--any-source", "--compare", "--arms", arms, "--seeds", str(seeds), "--steps", "8",
            "--check-every", "4", "--check-questions", "50", "--verify", "100", "--usage", "10", "--out", tmp,
            "--no-progress"]


def test_reuse_compare_resumes_and_reports():
    import json
    real, calls, interrupt = train.train, [], []

    def counted(model, tc, *args, **kw):  # counts the runs trained; can play a Ctrl-C in the middle of one
        history = real(model, tc, *args, **kw)
        calls.append(tc.seed)
        if interrupt:
            history["interrupted"] = interrupt.pop()
        return history
    train.train = counted
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = _save_source(tmp)
            folder = os.path.join(tmp, "compare_mix_d1_l3_h4_t8")
            assert _reuse_main(_compare_args(path, tmp, 1))[0] == 0 and calls == [1, 1]
            interrupt.append(True)  # the next run is stopped by Ctrl-C: it is not recorded
            assert _reuse_main(_compare_args(path, tmp, 2))[0] == 130 and calls == [1, 1, 2]
            assert len(open(os.path.join(folder, "results.jsonl")).readlines()) == 2
            assert _reuse_main(_compare_args(path, tmp, 2))[0] == 0 and calls == [1, 1, 2, 2, 2]
            md = open(os.path.join(folder, "compare.md")).read()
            assert _reuse_main(_compare_args(path, tmp, 2))[0] == 0 and len(calls) == 5, "finished runs are skipped"
            assert open(os.path.join(folder, "compare.md")).read() == md
            for row in ("| init | 1 |", "| init | 2 |", "| scratch | 1 |", "| scratch | 2 |"):
                assert row in md, md
            assert "| init | 0 of 2 | 0 of 2 | not within the budget |" in md and "`ins1_mix_d1_l3_h4" in md
            report = json.load(open(os.path.join(folder, "compare.json")))
            assert len(report["runs"]) == 4 and report["arms"]["scratch"]["seeds"] == 2
            assert all(len(r["checks"]) == 2 for r in report["runs"])  # steps 4 and 8
            assert os.path.isfile(os.path.join(folder, "compare.png"))
            rc, _, err = _reuse_main(_compare_args(path, tmp, 2) + ["--lr", "1e-3"])
            assert rc == 2 and "train.lr" in err and len(err.strip().splitlines()) == 1, err
            assert len(calls) == 5
    finally:
        train.train = real


def test_reuse_compare_arms_train_on_identical_batches():
    import hashlib
    real_train, real_batch, streams, current = train.train, data.random_batch, [], []

    def batch(*args, **kw):
        tokens = real_batch(*args, **kw)
        if current:
            current[-1].append(hashlib.sha1(tokens.cpu().numpy().tobytes()).hexdigest())
        return tokens

    def recorded(model, tc, *args, **kw):  # every batch drawn while one run trains (its checks' too)
        current.append([])
        try:
            return real_train(model, tc, *args, **kw)
        finally:
            streams.append((tc.seed, current.pop()))
    train.train, data.random_batch = recorded, batch
    try:
        with tempfile.TemporaryDirectory() as tmp:
            args = _compare_args(_save_source(tmp), tmp, 2, "init,scratch,keep-adder:1") + ["--usage", "0"]
            assert _reuse_main(args)[0] == 0
    finally:
        train.train, data.random_batch = real_train, real_batch
    assert [s for s, _ in streams] == [1, 1, 1, 2, 2]  # seed by seed: init, scratch, keep-adder (seed 1 only)
    first, second = [b for _, b in streams[:3]], [b for _, b in streams[3:]]
    assert len(first[0]) >= 8 and first[0] == first[1] == first[2] and second[0] == second[1]
    assert first[0][:8] != second[0][:8], "another seed should draw other batches"


def test_reuse_node_usage_after_growing():
    from dataclasses import replace
    import reuse
    src, _ = load_model(TINY_ADD3)
    model = Transformer(replace(src.cfg, n_layers=3, n_heads=4), torch.Generator().manual_seed(0)).eval()
    offset = reuse.insert(src, model, late=True, preserve=True)  # answers as the source: the same nodes matter
    rows, base = reuse.inserted_node_usage(model, src.cfg, offset, n_questions=60, progress=False)
    assert base["add"] == 1.0 and base["sub"] == 0.0 and base["neg"] == 0.0, base
    role = {r["node"]: r for r in rows}
    assert sorted(role) == ["L1H0", "L1H1", "L1H2", "L1MLP", "L2H0", "L2H1", "L2H2", "L2MLP"]
    assert role["L1MLP"]["role"] == "add" and role["L1MLP"]["max_fail"]["add"] > 0.5, role["L1MLP"]
    assert all(r["role"] in ("add", "unused") for r in rows)  # an addition model cannot serve subtraction
    own = reuse.inserted_node_usage(model, src.cfg, offset, n_questions=60, progress=False, use_analyse=False)
    assert own == (rows, base), "reuse_nodes' own ablation and analyse.py's should agree"

# ============================================================================= exercises (issue 7)

D5_ADDER = os.path.join(HERE, "checkpoints", "add_d5_l2_h3_t4K_s1.pt")


def _wrong_attention(attn, x, mask_after_softmax=False, scale=True):
    """Attention by hand with a planted mistake: the mask applied after the softmax, or no 1/sqrt(d_head)."""
    B, P, _ = x.shape
    q, k, v = (torch.einsum("bpc,hcd->bphd", x, W) + b for W, b in
               ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V)))  # each (B, P, H, D)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / (q.shape[-1] ** 0.5 if scale else 1)  # (B, H, P, P)
    mask = attn.mask[:P, :P]
    if mask_after_softmax:
        pattern = scores.softmax(-1).masked_fill(~mask, 0.0)
    else:
        pattern = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return pattern, torch.einsum("bhqk,bkhd->bqhd", pattern, v)


def _wrong_implementations():
    """{exercise: [(what is wrong, fn)]}: the planted mistakes each checker must catch."""
    import analyse
    import interventions as iv
    import reuse
    from dataclasses import replace
    sl = data.answer_slice

    def complexity_without_n(t, n):  # negative answers graded as M classes
        c = data.complexity(t, n)
        return torch.where(c >= data.COMPLEXITY.index("N1"), c - 4, c)

    def nines_anywhere(t, n):  # counts every sum-9 column, not only those directly above the carry
        s = t[:, :n] + t[:, n + 1:2 * n + 1]
        return torch.where((s > 9).any(1), (s == 9).sum(1).clamp(max=4), -1)

    def pca_uncentred(X, k):
        _, S, Vh = torch.linalg.svd(X, full_matrices=False)
        return X @ Vh[:k].T, Vh[:k], (S[:k] ** 2) / (S ** 2).sum()

    return {
        1: [("digits read least significant first", lambda t, n: data.read_answer(torch.cat(
                [t[:, sl(n)][:, :1], t[:, sl(n)][:, 1:].flip(1)], 1))),
            ("sign ignored", lambda t, n: data.value_of(t[:, sl(n)][:, 1:]))],
        2: [("mask applied after the softmax", functools.partial(_wrong_attention, mask_after_softmax=True)),
            ("scores not scaled", functools.partial(_wrong_attention, scale=False))],
        3: [("loss over all positions", lambda lg, t, n: -lg[:, :-1].double().log_softmax(-1).gather(
                -1, t[:, 1:, None])[..., 0]),
            ("off-by-one prediction position", lambda lg, t, n: evaluate.answer_nll(lg[:, sl(n)], t, n))],
        4: [("sum-9 columns counted anywhere", nines_anywhere)],
        5: [("negative answers graded as M classes", complexity_without_n)],
        6: [("zero-ablation where the mean is asked", lambda m, t, means, p, l, h: analyse.ablate_nodes(
                m, t, [dict(position=p, layer=l, head=h)], means, kind="zero").wrong)],
        7: [("PCA without centring", pca_uncentred)],
        8: [("patch one position too early", lambda m, s, a, nodes: iv.intervene(
                m, s, a, [[(p - 1, l, h) for p, l, h in nodes]])[0]),
            ("no patch at all", lambda m, s, a, nodes: m(a)[:, data.logit_slice(m.cfg.n_digits)].argmax(-1))],
        9: [("new heads not zeroed", lambda src, L, H: reuse.grow(
                src, replace(src.cfg, n_layers=L, n_heads=H), preserve=False)[0].eval())],
        10: [("an unrelated node", lambda m: (0, 0, 0)),
             ("every node at the position predicting A5", lambda m: [x for x in iv.all_nodes(m.cfg) if x[0] == 12])],
    }


def test_exercises_solutions_pass_and_planted_mistakes_fail():
    import exercises
    for i, check in exercises.CHECKS.items():
        kw = {"checkpoint": D5_ADDER} if i == 10 else {}  # the shipped 5-digit adder: fast on a CPU
        ok, msg = check(exercises.SOLUTIONS[i], **kw)
        assert ok, f"exercise {i} fails on the reference solution: {msg}"
        for what, wrong in _wrong_implementations()[i]:
            ok, msg = check(wrong, **kw)
            assert not ok and msg, f"exercise {i}: the checker passed a planted mistake ({what})"


def test_exercises_cli_stub_and_bad_input():
    import contextlib
    import io
    import exercises
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert exercises.main(["1"]) == 1            # the untouched stub
        assert exercises.main(["42"]) == 2 and exercises.main(["--all"]) == 2
    assert out.getvalue().strip() == "exercise 1: FAIL: not implemented yet: fill in the stub in exercises.py " \
                                     "(see EXERCISES.md)", out.getvalue()
    assert all(line.startswith("exercises.py: error:") for line in err.getvalue().splitlines())
    assert len(err.getvalue().splitlines()) == 2
    for i, check in exercises.CHECKS.items():  # every untouched stub: a friendly line, not a traceback
        ok, msg = check(exercises.STUBS[i], **({"checkpoint": D5_ADDER} if i == 10 else {}))
        assert not ok and msg.startswith("not implemented yet"), (i, msg)


# ============================================================================= training: checks, verify sets, runs, resume


def _checked_run(**kw):
    """A 1-digit adder (d_model 32) trained with checks; returns (model, history)."""
    cfg = Config(n_digits=1, n_layers=1, n_heads=2, d_model=32, d_head=16, d_mlp=128)
    tc = train.TrainConfig(**{**dict(task="add", n_digits=1, steps=1500, batch_size=64, lr=1e-2, seed=3,
                                     check_every=25, check_questions=200, until_verified=True), **kw})
    model = Transformer(cfg, torch.Generator().manual_seed(tc.seed))
    return model, train.train(model, tc, progress=False)


def test_until_verified_stops_at_the_first_zero_error_check():
    model, h = _checked_run()
    assert h["verified_step"] is not None and h["steps_done"] == h["verified_step"] < 1500
    assert h["checks"][-1]["step"] == h["verified_step"] and not any(h["checks"][-1]["errors"].values())
    assert all(any(c["errors"].values()) for c in h["checks"][:-1]) and sum(h["checks"][0]["errors"].values()) > 0
    assert {"add uniform", "add enriched", "Add.rule", "Add.sparse"} <= set(h["checks"][0]["errors"])
    assert not any(evaluate.errors(evaluate.verify(model, "add", 1, "all", progress=False)).values())
    try:
        train.TrainConfig(until_verified=True)
        raise AssertionError("until_verified without checks was accepted")
    except ValueError as e:
        assert "check_every" in str(e)


class _Perfect(torch.nn.Module):
    """Answers every question right (its logits are the next token), except `wrong` questions' last digit."""

    def __init__(self, wrong=()):
        super().__init__()
        self.w, self.wrong = torch.nn.Parameter(torch.zeros(())), [data.encode(q) for q in wrong]

    def forward(self, tokens, read=slice(None)):
        logits = torch.nn.functional.one_hot(tokens[:, 1:], 15).float() * 10  # (B, P-1, V)
        for q in self.wrong:
            hit = (tokens == q).all(1)
            logits[hit, -1] = logits[hit, -1].roll(1, -1)
        return torch.cat([logits, logits[:, :1]], 1)[:, read]


def test_sparse_set_catches_sparse_questions():
    sets = data.sparse_sets("mix", 6)
    add, sub = set(data.decode(sets["Add.sparse"])), set(data.decode(sets["Sub.sparse"]))
    for q in ("500000+500000=+1000000", "000095+000005=+0000100", "000005+000095=+0000100", "500003+500000=+1000003"):
        assert q in add
    for q in ("000000-100000=-0100000", "019000-031000=-0012000"):
        assert q in sub
    assert "153007+153007=+0306014" not in add and len(add) == len(sub) > 100_000
    pairs = data.sparse_pairs(6)
    assert (((data.digits_of(pairs[:, 0], 6) + data.digits_of(pairs[:, 1], 6)) > 0).sum(1) <= 2).all()
    sample = data.sparse_pairs(6, 500, torch.Generator().manual_seed(0))
    assert 600 <= len(sample) <= 1100  # every one-column pair (up to 600) + 500 drawn
    r = evaluate.verify(_Perfect(["019000-031000=-0012000"]), "mix", 6, 1000, progress=False)
    assert evaluate.errors(r)["Sub.sparse"] == 1 and sum(evaluate.errors(r).values()) == 1
    assert "019000-031000" in r["Sub.sparse"]["failures"][0]


def test_verify_reports_uniform_and_enriched_apart():
    r = evaluate.verify(_Perfect(), "add", 5, 20_000, progress=False)
    share = lambda name, classes: sum(r[name]["by_class"].get(c, [0])[0] for c in classes) / 20_000  # noqa: E731
    assert r["add uniform"]["questions"] == r["add enriched"]["questions"] == 20_000
    assert share("add uniform", ["S4", "S5"]) < 0.001 < 0.01 < share("add enriched", ["S4", "S5"])
    assert "uniform: every digit uniform" in evaluate.report(r) and not any(evaluate.errors(r).values())


TINY = ("--digits", "1", "--steps", "30", "--d-model", "16", "--d-head", "8", "--batch-size", "32", "--verify", "100",
        "--no-progress")


def _quiet(main, args):
    """Run a CLI's main() in-process without its output; return its exit status."""
    import contextlib
    import io
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return main(list(args))


def test_runs_never_overwrite_a_checkpoint_unless_asked():
    with tempfile.TemporaryDirectory() as d:
        pt = os.path.join(d, "add_d1_l2_h3_t30_s1.pt")
        assert _quiet(train.main, [*TINY, "--out", d]) == 0
        before = os.path.getmtime(pt)
        err = cli_error(train.main, [*TINY, "--out", d])
        assert "exists" in err and "--overwrite" in err and len(err.splitlines()) == 1
        assert os.path.getmtime(pt) == before
        time.sleep(0.01)
        assert _quiet(train.main, [*TINY, "--out", d, "--overwrite"]) == 0
        assert os.path.getmtime(pt) > before
    assert train.build_parser().get_default("out") == "runs" and "(default runs)" in train.build_parser().format_help()


def _interrupt_at(step):
    """An after_step hook that sends this process a real SIGINT (Ctrl-C) after `step` steps."""
    count = [0]

    def hook(model):
        count[0] += 1
        if count[0] == step:
            os.kill(os.getpid(), signal.SIGINT)
    return hook


def test_ctrl_c_then_resume_equals_an_uninterrupted_run():
    cfg = Config(n_digits=2, n_layers=1, n_heads=2, d_model=16, d_head=8, d_mlp=32)
    tc = train.TrainConfig(task="mix", n_digits=2, steps=40, batch_size=16, seed=5, clip=1.0, check_every=10,
                           check_questions=50)
    whole = Transformer(cfg, torch.Generator().manual_seed(5))
    h_whole = train.train(whole, tc, progress=False)
    part = Transformer(cfg, torch.Generator().manual_seed(5))
    h_part = train.train(part, tc, after_step=_interrupt_at(17), progress=False)
    assert h_part["interrupted"] and h_part["steps_done"] == 17
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.resume.pt")
        artefacts.save_resume(path, part, tc, h_part)
        model, tc2, h = artefacts.load_resume(path)
    h_rest = train.train(model, train.TrainConfig(**tc2), resume=h, progress=False)
    assert h_rest["steps_done"] == 40 and not h_rest["interrupted"]
    assert h_rest["loss"] == h_whole["loss"] and h_rest["checks"][-1]["errors"] == h_whole["checks"][-1]["errors"]
    assert [c["step"] for c in h_rest["checks"]] == [10, 20, 30, 40]
    for (k, a), b in zip(whole.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_ctrl_c_at_the_command_line_saves_names_and_exits_non_zero():
    import subprocess
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "train.py"), *TINY[:2], "--steps", "100000",
                                 *TINY[4:-1], "--out", d], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = ""
        while "loss=" not in seen and proc.poll() is None:  # the progress bar shows a loss: steps were taken
            seen += proc.stderr.read(1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        err = seen + err
        assert proc.returncode == 130 and "Traceback" not in err, err
        names = sorted(os.listdir(d))
        assert len(names) == 4 and names[0].endswith("_s1.json") and "_t100K_" not in names[0], (names, out, err)
        assert "not checked" in out and "--resume" in out and not any("uniform" in line for line in out.splitlines())
        resume = os.path.join(d, [n for n in names if n.endswith(".resume.pt")][0])
        code, _, err = run_cli("--resume", resume, "--lr", "1", "--no-progress")
        assert code == 2 and "drop --lr" in err


# ============================================================================= runner


def main():
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_") and callable(f)]
    only = sys.argv[1:]
    passed, failed, t0 = 0, 0, time.time()
    for name, fn in tests:
        if only and not any(o in name for o in only):
            continue
        t = time.time()
        try:
            fn()
            passed += 1
            print(f"ok    {name} ({time.time() - t:.1f}s)", flush=True)
        except Exception as e:  # report every failure, then carry on
            failed += 1
            print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)
    print(f"{passed} passed, {failed} failed in {time.time() - t0:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
