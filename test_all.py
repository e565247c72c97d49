"""
The project's tests: `python test_all.py` (or `pytest test_all.py`), a few minutes on a laptop CPU.

Three kinds, as in micrograd: against an oracle (PyTorch's own attention and LayerNorm, Python integers),
against expected values (the hand-made question sets), and smoke runs (a tiny model must learn).
"""
import functools
import json
import os
import signal
import sys
import tempfile
import time
from unittest import mock

import torch

import artefacts
import data
import evaluate
import train
import model as model_lib
from artefacts import save_model
from model import CheckpointError, Config, Transformer, layer_norm_by_hand, load_model

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
        model.run_with_cache(torch.zeros(2, 13, dtype=torch.long), names_filter=["no.such.hook"])
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


def test_enrichment_by_batch_or_by_question():
    def shares(op, by):  # per batch of 400: the share of cells that trigger a cascade (sum 9 / equal digits)
        gen, out = torch.Generator().manual_seed(1), []
        for _ in range(30):
            x, y = torch.randint(0, 10, (400, 5), generator=gen), torch.randint(0, 10, (400, 5), generator=gen)
            data.enrich(x, y, op, gen, by=by)
            out.append(((x + y == 9) if op == "add" else (x == y)).float().mean().item())
        return torch.tensor(out)
    for op in ("add", "sub"):
        whole, mixed = shares(op, "batch"), shares(op, "question")
        assert whole.min() < 0.15 and whole.max() > 0.4  # some batches plain (~0.1), some enriched (~0.46)
        assert 0.27 < mixed.min() and mixed.max() < 0.36  # every batch near 0.6 x 0.4 + 0.1 x 0.76 = 0.316
    expect_value_error(lambda: train.TrainConfig(enrich_by="column"), "enrich_by", "batch or question")


def resolve_flags(*flags):
    """train.py's (Config, TrainConfig) for these command-line flags."""
    return train.resolve(train.build_parser().parse_args(list(flags)), train.build_parser())


def test_mixed_batches_by_batch_or_by_question():
    ops = lambda t: t[:, 3] == data.MINUS  # noqa: E731  (B,) subtraction? the operator sits after 3 digits
    whole = [data.random_batch("mix", 3, 50, torch.Generator().manual_seed(s), 80) for s in range(40)]
    shares = torch.tensor([ops(b).float().mean().item() for b in whole])
    assert set(shares.tolist()) <= {0.0, 1.0} and 0.6 < shares.mean() < 0.95  # one operator a batch, ~80% sub
    for perc, n_sub in ((80, 40), (0, 0), (100, 50), (33, 16)):  # round(50 * perc / 100) subtractions every batch
        b = data.random_batch("mix", 3, 50, torch.Generator().manual_seed(1), perc, mix_by="question")
        assert b.shape == (50, 3 * 3 + 4) and int(ops(b).sum()) == n_sub and ops(b)[:n_sub].all()
        for q in data.decode(b):
            assert int(q[8:]) == (int(q[:3]) - int(q[4:7]) if q[3] == "-" else int(q[:3]) + int(q[4:7])), q
    for bad in (lambda: data.random_batch("mix", 3, 5, torch.Generator(), mix_by="row"),
                lambda: train.TrainConfig(task="mix", mix_by="row")):
        try:
            bad()
            raise AssertionError("an unknown mix_by was accepted")
        except ValueError as e:
            assert "mix_by" in str(e)
    assert resolve_flags("--task", "mix")[1].mix_by == "question"  # the measured default; the papers' by a flag
    assert resolve_flags("--task", "mix", "--mix-by", "batch")[1].mix_by == "batch"


def test_short_and_sparse_operands():
    reference = data.random_batch("add", 5, 500, torch.Generator().manual_seed(0))
    assert torch.equal(reference, data.random_batch("add", 5, 500, torch.Generator().manual_seed(0), p_short=0))
    for op in ("add", "sub"):
        for p_short, p_sparse in ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.3, 0.3)):
            batch = data.random_batch(op, 5, 4000, torch.Generator().manual_seed(1), p_short=p_short, p_sparse=p_sparse)
            for q in data.decode(batch[:50]):  # answers stay right
                assert int(q[12:]) == (int(q[:5]) + int(q[6:11]) if op == "add" else int(q[:5]) - int(q[6:11])), q
            zero = (batch[:, :5] == 0) & (batch[:, 6:11] == 0)            # (B, 5) columns zero in both operands
            short = (zero[:, 0] & zero[:, 1]).float().mean()                # top two columns cleared
            hole = (zero[:, 4] & (~zero[:, :4]).any(1)).float().mean()     # units cleared below a non-zero column
            # short: 3/4 of shortened questions clear two or more top columns; sparse: a third keep <= 2 of 5
            assert abs(short - 0.75 * p_short - p_sparse / 3) < 0.05, (op, p_short, p_sparse, short)
            assert (hole > 0.08) == (p_sparse > 0), (op, p_short, p_sparse, hole)  # 0.5-5% by chance
        x, y = torch.ones(4, 1, dtype=torch.long), torch.ones(4, 1, dtype=torch.long)
        data.shorten(x, y, torch.Generator().manual_seed(0), 1.0)  # one digit: nothing to shorten
        assert x.sum() == 4 and y.sum() == 4


def carried_into_near_nine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) bool: some column above the units sums to 7 or 8 and takes a carry. x, y: (B, n), most significant first."""
    carry, found = torch.zeros(len(x), dtype=torch.bool), torch.zeros(len(x), dtype=torch.bool)
    for j in range(x.shape[1] - 1, -1, -1):  # units first
        s = x[:, j] + y[:, j]
        found |= carry & ((s == 7) | (s == 8))
        carry = s + carry.long() >= 10
    return found


def test_near_nines_make_carries_into_sevens_and_eights():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 10, (20000, 6), generator=gen), torch.randint(0, 10, (20000, 6), generator=gen)
    x0, y0 = x.clone(), y.clone()
    data.near_nines(x, y, gen, 0.3)
    edited = ((x != x0) | (y != y0)).any(1)
    assert abs(edited.float().mean() - 0.3) < 0.02, edited.float().mean()  # a few drawn digits stay as they were
    assert carried_into_near_nine(x[edited], y[edited]).all()
    assert carried_into_near_nine(x0, y0).float().mean() < 0.5  # the control: uniform digits mostly do not
    assert 0 <= x.min() and x.max() <= 9 and 0 <= y.min() and y.max() <= 9
    changed = (x != x0) | (y != y0)                                # (B, n) at most the column, 2 sum-9s, the source
    assert changed.sum(1).max() <= 4
    for op in ("add", "sub", "mix"):  # p_near9=0 draws nothing; subtractions are never edited
        plain = data.random_batch(op, 5, 300, torch.Generator().manual_seed(2), p_short=0.1, mix_by="question")
        same = data.random_batch(op, 5, 300, torch.Generator().manual_seed(2), p_short=0.1, mix_by="question", p_near9=0)
        assert torch.equal(plain, same)
    batches = [data.random_batch("mix", 5, 4000, torch.Generator().manual_seed(3), p_near9=p, mix_by="question")
               for p in (0.0, 0.5)]
    subs = batches[0][:, 5] == data.encode("-")[0]                  # the subtractions come first, drawn alike
    for q in data.decode(batches[1][~subs][:200]):  # the edited additions' answers stay right
        assert q[5] == "+" and int(q[12:]) == int(q[:5]) + int(q[6:11]), q
    assert subs.sum() == 2000 and torch.equal(batches[0][subs], batches[1][subs])
    near = [carried_into_near_nine(b[~subs, :5], b[~subs, 6:11]).float().mean() for b in batches]
    assert near[1] - near[0] > 0.3, near  # about half of the additions gain one (some had one already)


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


def run_cli(*args, script="train.py", input=None):
    import subprocess
    r = subprocess.run([sys.executable, os.path.join(HERE, script), *args], capture_output=True, text=True, timeout=120,
                       input=input)
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
                     ["--sparse-operands", "-0.1"], ["--near-nines", "1.5"], ["--task", "sub", "--near-nines", "0.1"],
                     ["--short-operands", "0.6", "--sparse-operands", "0.6"],
                     ["--preset", "ins1_mix_d6_l3_h4_t40K"], ["--lr-loss-ref", "inf"], ["--clip", "-1"]):
            msg = cli_error(train.main, args + ["--out", d])
            assert msg.startswith("train.py: error:"), (args, msg)
            assert len(msg.splitlines()) == 1, (args, msg)
        code, out, err = run_cli("--checkpoint", corrupt)  # and as a real process: one line, no traceback
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and "corrupt.pt" in err


def test_smoke_tiny_model_learns_two_digit_addition():  # speed is measured in bench.py, never in a test
    model = tiny_model("add", 2, 600)
    results = evaluate.verify(model, "add", 2, "all", progress=False)
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
        with open(os.path.join(d, names[0])) as f:  # the check is recorded in the checkpoint's .json
            done = json.load(f)["verifications"]
        assert len(done) == 1 and done[0]["questions"] == "all" and done[0]["results"]["add all"]["questions"] == 100
        code, out, err = run_cli("--checkpoint", os.path.join(d, names[1]), "--task", "sub")
        assert code != 0 and "is an add model" in err

# ============================================================================= analyse (ablations, useful nodes, plots, report)


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
    nodes = [analyse.Node(last, layer, h) for layer in range(cfg.n_layers) for h in [*range(cfg.n_heads), None]]
    hooks = [analyse.node_hook(nd, means, "mean") for nd in nodes] + analyse.position_hooks(last, means, "zero", 2)
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
    nodes = [analyse.Node(p, layer, h) for p in range(read.start, read.stop)
             for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
    before = analyse.failures(model, tokens, 2).fails.float().mean()
    for kind in ("mean", "zero"):
        after = analyse.ablate_nodes(model, tokens, nodes, means, kind).fails.float().mean()
        assert before < 0.05 and after > 0.5, (kind, before, after)


def test_analyse_useful_nodes_tags_and_nodes_json_round_trip():
    import re
    import analyse
    import plots
    model, tokens, means = _analysed()
    cfg = model.cfg
    baseline = analyse.failures(model, tokens, 2)
    broken = analyse.position_ablation(model, tokens, means, "mean", baseline)  # (P, B)
    positions = broken.any(1).nonzero().flatten().tolist()
    # Nothing computed at A0 is read; every answer digit but the sign (always + here) is computed somewhere.
    assert cfg.n_ctx - 1 not in positions and {7, 8} <= set(positions), positions
    nodes = analyse.find_nodes(model, tokens, positions, means, analyse.mean_patterns(model, tokens), "mean", baseline)
    assert nodes and all(nd.position in positions for nd in nodes)
    pattern = r"FailPerc\.\d+|Impact\.A[0-3]+|(Add\.S[0-5])|Attn\.\d+=\d+"
    assert all(re.fullmatch(pattern, t) for tags in nodes.values() for t in tags), nodes
    assert all(analyse.tag_values(tags, "Attn") for nd, tags in nodes.items() if not nd.is_mlp)
    assert analyse.position_names(2, "add") == ["D1", "D0", "+", "D'1", "D'0", "=", "sign", "A2", "A1", "A0"]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "nodes.json")
        analyse.write_nodes(path, nodes, cfg)
        assert analyse.read_nodes(path, cfg) == nodes and list(analyse.read_nodes(path, cfg)) == list(nodes)
    names = analyse.position_names(2, "add")
    for kind in ("fail", "attention", "impact", "Add"):
        assert plots.map_cells(nodes, names, kind, 2)
    assert plots.impact_text({0, 1, 2, 5}, 5) == "A0..2,5" and plots.impact_text({4, 5}, 5) == "A45"


def test_analyse_every_plot_returns_a_figure():
    import matplotlib.figure
    import plots
    figs = [plots.quanta_map({("L0H0", "D1"): ("100%", 10), ("L1MLP", "A2"): ("M4+", 99)}, ["L0H0", "L1MLP"],
                             ["D1", "A2"], plots.paled("winter", 10), "palette indices are clamped"),
            plots.quanta_map({}, ["L0H0"], ["D1"], plots.paled(plots.GREEN_YELLOW, 4), "empty"),
            plots.attention_grid(torch.rand(2, 3, 10, 10).tril(), [str(i) for i in range(10)], "attention"),
            plots.position_bars([0, 50, 100], ["a", "b", "c"], "positions"),
            plots.plot_pca([{"proj": torch.randn(30, 2), "labels": torch.arange(3).repeat(10), "classes": ["a", "b", "c"],
                             "evr": [0.5, 0.2], "title": "pca"}]),
            plots.plot_neurons([torch.randn(20)], [(torch.arange(20), torch.arange(20) % 2, "D0 + D'0")], ["neuron"])]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs)
    for f in figs:
        f.savefig(os.devnull, format="png")  # drawing must not fail either
        plots.plt.close(f)


def test_analyse_cli_writes_report_and_nodes():
    import report
    model = tiny_model("add", 2, 600)
    with tempfile.TemporaryDirectory() as d:
        path, tl, out = os.path.join(d, "add_d2.pt"), os.path.join(d, "tl.pth"), os.path.join(d, "out")
        save_model(path, model, task="add", seed=0, steps=600)
        assert report.main([path, "--out", out, "--questions", "64", "--no-progress", "--only", "accuracy",
                             "attention", "positions", "nodes", "maps"]) == 0
        files = set(os.listdir(out))
        assert {"report.md", "nodes.json", "map_fail.png", "map_impact.png", "positions.png", "attention_mean.png",
                "accuracy.json", "attention.json", "positions.json", "maps.json"} <= files
        import json
        with open(os.path.join(out, "accuracy.json")) as f:
            accuracy = json.load(f)
        assert sum(r["questions"] for r in accuracy["sets"]) > 0 and {"class", "correct"} <= set(accuracy["classes"][0])
        with open(os.path.join(out, "maps.json")) as f:
            maps = json.load(f)
        with open(os.path.join(out, "nodes.json")) as f:
            assert len(maps["fail"]) == len(json.load(f))  # one failure-map cell per useful node
        text = open(os.path.join(out, "report.md")).read()
        assert all(f"![{f}]({f})" in text for f in files if f.endswith(".png"))
        assert "## Useful nodes" in text and "## Quanta maps" in text
        torch.save(model.state_dict(), tl)  # a TransformerLens-style file: it does not say its task
        with open(os.path.join(d, "add_d2.json"), "w") as f:
            f.write("{}")  # what train.py writes beside the .pt
        for args, says in (([tl], "--task"), ([os.path.join(d, "missing.pt")], "no such"),
                           ([path, "--task", "sub"], "is an add model, not sub"), ([path, "--only", "nope"], "nope"),
                           ([d], "is a folder"), ([os.path.join(d, "add_d2.json")], f"analyse {path}")):
            msg = cli_error(report.main, args + ["--out", out])
            assert msg.startswith("analyse.py: error:") and len(msg.splitlines()) == 1 and says in msg, (args, msg)

# ============================================================================= algorithm (sub-task framework, PCA, interventions)


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
    from analyse import pca
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
    import interventions as iv
    from analyse import Node
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
    passes, total = iv.test_claim(model, store, alter, want, [Node(0, 0, 0)])
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
               train={"lr": 3e-3, "batch_size": 32, "weight_decay": 0.1, "warmup": 0.3, "clip": 0.5,
                      "betas": [0.8, 0.9], "eps": 1e-6, "p_short": 0.2})
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
        recipe = {k: info["train"][k] for k in ("warmup", "clip", "betas", "eps", "p_short", "p_sparse")}
        assert recipe == {"warmup": 0.3, "clip": 0.5, "betas": (0.8, 0.9), "eps": 1e-6, "p_short": 0.2,
                          "p_sparse": 0.0}, recipe
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
            rates = sorted(1e5 * r["errors"]["sub uniform"] / r["questions"]["sub uniform"]
                           for r in report["runs"] if r["arm"] == "scratch")
            assert report["arms"]["scratch"]["median_sub_per_100k"] == sum(rates) / 2  # the median of two
            assert all(len(r["checks"]) == 2 for r in report["runs"])  # steps 4 and 8
            # no run had a zero-error check: each is checked at the end on a tenth of --verify, marked *
            assert all(r["questions"]["add uniform"] == 10 and r["questions"]["sub uniform"] == 10 for r in report["runs"])
            assert "| init | 1 | not within the budget | - |" in md and "*" in md.split("| init | 1 |")[1].splitlines()[0]
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
    # an addition model gets a few subtractions right by chance (x - 0 is x + 0): too few to give a role
    assert base["add"] == 1.0 and base["sub"] < 0.1 and base["neg"] == 0.0, base
    role = {r["node"]: r for r in rows}
    assert sorted(role) == ["L1H0", "L1H1", "L1H2", "L1MLP", "L2H0", "L2H1", "L2H2", "L2MLP"]
    assert role["L1MLP"]["role"] == "add" and role["L1MLP"]["max_fail"]["add"] > 0.5, role["L1MLP"]
    assert all(r["role"] in ("add", "unused") for r in rows)  # an addition model cannot serve subtraction

# ============================================================================= coursework (coursework/)

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
        6: [("zero-ablation where the mean is asked", lambda m, t, means, node: analyse.ablate_nodes(
                m, t, [node], means, kind="zero").wrong),
            ("the MLP ablated instead of the head", lambda m, t, means, node: analyse.ablate_nodes(
                m, t, [node._replace(head=None)], means).wrong)],
        7: [("PCA without centring", pca_uncentred)],
        8: [("patch one position too early", lambda m, s, a, nodes: iv.intervene(
                m, s, a, [[x._replace(position=x.position - 1) for x in nodes]])[0]),
            ("no patch at all", lambda m, s, a, nodes: m(a)[:, data.logit_slice(m.cfg.n_digits)].argmax(-1))],
        9: [("new heads not zeroed", lambda src, L, H: reuse.grow(
                src, replace(src.cfg, n_layers=L, n_heads=H), preserve=False)[0].eval())],
        10: [("an unrelated node", lambda m: analyse.Node(0, 0, 0)),
             ("an unrelated node as a plain tuple", lambda m: (0, 0, None)),
             ("every node at the position predicting A5", lambda m: [
                 x for x in iv.all_nodes(m.cfg) if x.position == iv.answer_position(5, m.cfg.n_digits)]),
             ("an MLP written the old way, head == n_heads", lambda m: [(iv.answer_position(5, m.cfg.n_digits), 1,
                                                                        m.cfg.n_heads)])],
    }


def test_coursework_solutions_pass_and_planted_mistakes_fail():
    from coursework import checks, solutions
    for i, check in checks.CHECKS.items():
        ok, msg = check(getattr(solutions, checks.EXERCISES[i][0]))
        assert ok, f"exercise {i} fails on the reference solution: {msg}"
        for what, wrong in _wrong_implementations()[i]:
            ok, msg = check(wrong)
            assert not ok and msg, f"exercise {i}: the checker passed a planted mistake ({what})"


def _untouched(*args, **kw):
    """What every stub in coursework/exercises.py is before a student edits it."""
    raise NotImplementedError


def _run_coursework(argv, stubs):
    """(exit status, stdout lines, stderr lines) of `python -m coursework ARGV` with coursework/exercises.py's
    stubs replaced by `stubs` {exercise: fn} (the others untouched), so the result does not depend on what a student has solved."""
    import contextlib
    import io
    from coursework import __main__ as cli, checks, exercises
    saved = {name: getattr(exercises, name) for name, _ in checks.EXERCISES.values()}
    out, err = io.StringIO(), io.StringIO()
    try:
        for i, (name, _) in checks.EXERCISES.items():
            setattr(exercises, name, stubs.get(i, _untouched))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main(argv)
            except SystemExit as e:  # argparse: bad input, --help
                rc = e.code
    finally:
        for name, fn in saved.items():
            setattr(exercises, name, fn)
    return rc, out.getvalue().splitlines(), err.getvalue().splitlines()


def test_coursework_cli_untouched_stubs_and_bad_input():
    from coursework import checks
    none = {i: _untouched for i in checks.EXERCISES}
    rc, out, err = _run_coursework(["1"], none)
    assert (rc, out, err) == (1, [f"exercise 1: FAIL: {checks.NOT_STARTED}"], []), (rc, out, err)
    rc, out, _ = _run_coursework([], none)  # the listing: one line per exercise, then a summary; status 0
    assert rc == 0 and len(out) == len(checks.EXERCISES) + 1 and out[-1].startswith("0 of 10 solved"), out
    assert all(" not started " in line for line in out[:-1]), out
    for argv in (["42"], ["0"], ["--all"], ["3", "x"], ["-1"]):  # bad input: one line, status 2
        rc, out, err = _run_coursework(argv, none)
        assert rc == 2 and out == [] and len(err) == 1 and err[0].startswith("python -m coursework: error: "), \
            (argv, rc, out, err)
    rc, out, _ = _run_coursework(["--help"], none)
    assert rc == 0 and any("--solutions" in line for line in out)
    for i, check in checks.CHECKS.items():  # every untouched stub: a friendly line, not a traceback
        assert check(_untouched) == (False, checks.NOT_STARTED), i


def test_coursework_cli_after_a_student_solves_exercises():
    """A student who has filled in some stubs (here: 1 and 4, with the reference solutions; 7 with a
    wrong one): the command reports each honestly and the suite's other expectations still hold."""
    from coursework import checks, solutions
    stubs = {i: _untouched for i in checks.EXERCISES}
    stubs.update({1: solutions.ex1_read_answer, 4: solutions.ex4_cascade_length,
                  7: _wrong_implementations()[7][0][1]})
    rc, out, err = _run_coursework(["1", "4"], stubs)
    assert rc == 0 and err == [] and [line[:19] for line in out] == ["exercise 1: PASS: r", "exercise 4: PASS: 4"]
    rc, out, _ = _run_coursework(["4", "7", "2"], stubs)
    assert rc == 1 and [line.split(":")[1] for line in out] == [" PASS", " FAIL", " FAIL"], out
    assert out[2] == f"exercise 2: FAIL: {checks.NOT_STARTED}"
    rc, out, _ = _run_coursework([], stubs)
    states = [line.split()[1] for line in out[:-1]]
    assert rc == 0 and states == ["solved", "not", "not", "solved", "not", "not", "fails", "not", "not", "not"], out
    assert out[-1].startswith("2 of 10 solved"), out
    rc, out, _ = _run_coursework(["all"], stubs)
    assert rc == 1 and [line.split(":")[0] for line in out] == [f"exercise {i}" for i in range(1, 11)], out
    assert [i for i, line in enumerate(out, 1) if ": PASS: " in line] == [1, 4], out
    rc, out, _ = _run_coursework(["--solutions", "2", "7"], stubs)  # the reference, whatever the stubs
    assert rc == 0 and [line[:18] for line in out] == ["exercise 2: PASS: ", "exercise 7: PASS: "], out
    test_coursework_cli_untouched_stubs_and_bad_input()  # unchanged by what the student has solved


def test_coursework_readme_matches_what_is_shipped():
    """coursework/README.md names only what exists: its table is the command's, every exercise has a stub and
    a reference solution with the same parameters, every `module.name`, file and test it names exists, and
    every command it gives parses (the coursework's own, and train.py / analyse.py / reuse.py's)."""
    import importlib
    import inspect
    import re
    import shlex
    from coursework import __main__ as cli, checks, exercises, solutions
    text = open(os.path.join(HERE, "coursework", "README.md")).read()
    rows = re.findall(r"^\| (\d+) \| (.+?) \| .+? \| .+? \|$", text, re.M)
    assert {int(i): title for i, title in rows} == {i: t for i, (_, t) in checks.EXERCISES.items()}, rows
    for i, (name, _) in checks.EXERCISES.items():
        assert f"`{name}(" in text and f"python -m coursework {i}`" in text, name
        want = list(inspect.signature(getattr(exercises, name)).parameters)
        assert list(inspect.signature(getattr(solutions, name)).parameters)[:len(want)] == want, name
    modules = ("data model train evaluate artefacts analyse algorithm framework interventions reuse reuse_nodes "
               "plots report").split()
    names = set(re.findall(r"`(?:[^`]*?[^\w.])?((?:%s)\.[A-Za-z_][\w.]*)" % "|".join(modules), text))
    assert len(names) > 40, names
    missing = []  # every name at once: after a refactor, the list of what the README must follow
    for dotted in sorted(n for n in names if not n.endswith((".py", "."))):
        obj = importlib.import_module(dotted.split(".")[0])
        for attr in dotted.split(".")[1:]:
            if not hasattr(obj, attr):
                missing.append(dotted)
                break
            obj = getattr(obj, attr)
    assert not missing, f"coursework/README.md names what does not exist: {missing}"
    for path in set(re.findall(r"`([\w./*-]+\.(?:py|md|pt|json|png))`", text)) - {"README.md"}:
        if not path.startswith("out/"):  # written by the commands the README gives
            where = path if "/" in path else os.path.join("coursework", path) if os.path.exists(
                os.path.join(HERE, "coursework", path)) else path
            assert os.path.exists(os.path.join(HERE, where)), f"coursework/README.md names {path}: not there"
    for test in set(re.findall(r"`(test_\w+)`", text)):
        assert test in globals(), f"coursework/README.md names {test}, which test_all.py does not have"
    command = r"python (?:-m coursework(?=[ `\n])|\w+\.py )"
    commands = (re.findall(r"^(%s[^#\n]*?)\s*(?:#.*)?$" % command, text, re.M)
                + re.findall(r"`(%s[^`]*)`" % command, text))
    parsers = {"train.py": train.build_parser, "analyse.py": importlib.import_module("report").build_parser,
               "reuse.py": importlib.import_module("reuse").build_parser}  # analyse.py's command is report.py's
    parsed = 0
    for command in commands:
        words = shlex.split(command)[1:]
        if command == "python -m coursework 42":  # the README's example of bad input
            assert _run_coursework(words[2:], {})[0] == 2
        elif words[-1] == "--help":
            assert words[:2] == ["-m", "coursework"] and _run_coursework(["--help"], {})[0] == 0
        elif words[:2] == ["-m", "coursework"]:
            cli.chosen(cli.build_parser(), cli.build_parser().parse_args(words[2:]).exercise)
        elif words[0] in parsers:
            parsers[words[0]]().parse_args(words[1:])
        else:
            assert os.path.exists(os.path.join(HERE, words[0])), command
            continue
        parsed += 1
    assert parsed >= 15, commands


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


def test_stress_sets_draw_every_family_and_leave_the_other_sets_alone():
    n, k = 6, 20_000
    pairs = data.stress_pairs(n, k, torch.Generator().manual_seed(0))
    assert pairs.shape == (k, 2) and pairs.min() >= 0 and pairs.max() < 10 ** n
    d = torch.stack([data.digits_of(pairs[:, 0], n), data.digits_of(pairs[:, 1], n)], 1)  # (k, 2, n)
    share = lambda hit: hit.float().mean().item()  # noqa: E731
    a, b = pairs[:, 0], pairs[:, 1]
    assert 0.18 < share(torch.isin(d, torch.tensor([0, 1, 8, 9])).all(-1).all(-1)) < 0.30  # 2 alphabets of 10 + chance
    assert 0.07 < share(((d == 4) | (d == 5)).all(-1).all(-1)) < 0.13
    assert 0.09 < share(torch.isin(pairs, torch.tensor([0, 1, 10 ** n - 1])).any(1)) < 0.2
    assert 0.15 < share((a - b).abs() <= 999) < 0.35 and 0.01 < share(a == b) < 0.06  # near-equal, equal columns
    assert 0.12 < share(((d[:, 0] + d[:, 1]) == 9).sum(-1) >= 4) < 0.25  # columns summing to 9, alphabets
    with_stress = evaluate.question_sets("mix", n, 500, torch.Generator().manual_seed(3))
    without = evaluate.question_sets("mix", n, 500, torch.Generator().manual_seed(3), n_stress=0)
    assert [k for k in with_stress if k not in without] == ["Add.stress", "Sub.stress"]
    for name in without:  # drawn last: every other set is the same questions as without them
        assert all(torch.equal(x, y) for x, y in zip(with_stress[name], without[name])), name
    r = evaluate.verify(_Perfect(), "mix", n, 1000, progress=False)
    assert r["Add.stress"]["questions"] == r["Sub.stress"]["questions"] == 100 and not any(evaluate.errors(r).values())


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


def test_loss_scaled_schedule_shrinks_with_the_loss_and_never_grows_back():
    plain, scaled = train.Schedule(100, 0.1), train.Schedule(100, 0.1, loss_ref=1e-2)
    assert [plain(s) for s in range(100)] == [train.lr_factor(s, 100, 0.1) for s in range(100)]
    for loss in [1.0] * 50 + [1e-4] * 200:  # the 10-step average falls to ~1e-4
        scaled.observe(loss)
    assert scaled(5) == train.lr_factor(5, 100, 0.1)  # warm-up is never scaled
    assert 0.09 < scaled(50) / train.lr_factor(50, 100, 0.1) < 0.11  # sqrt(1e-4 / 1e-2)
    for _ in range(20):
        scaled.observe(1.0)  # a jump back up keeps the lowest loss, so lr stays down
    assert 0.09 < scaled(50) / train.lr_factor(50, 100, 0.1) < 0.11
    p = train.build_parser()
    tc5 = train.resolve(p.parse_args(["--task", "add", "--digits", "5"]), p)[1]
    assert (tc5.lr_loss_ref, tc5.p_near9) == (3e-3, 0.1)  # the 5-digit adder's measured default
    assert train.resolve(p.parse_args(["--task", "add", "--digits", "6"]), p)[1].lr_loss_ref == 0  # off elsewhere
    assert train.resolve(p.parse_args(["--lr-loss-ref", "0", "--near-nines", "0"]), p)[1].lr_loss_ref == 0  # a flag wins
    assert train.resolve(p.parse_args(["--lr-loss-ref", "1e-2"]), p)[1].lr_loss_ref == 1e-2


def test_ctrl_c_then_resume_equals_an_uninterrupted_run():
    cfg = Config(n_digits=2, n_layers=1, n_heads=2, d_model=16, d_head=8, d_mlp=32)
    tc = train.TrainConfig(task="mix", n_digits=2, steps=40, batch_size=16, seed=5, clip=1.0, check_every=10,
                           check_questions=50, lr_loss_ref=5.0)  # the loss-scaled lr's state must resume too
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
        table = [line for line in out.splitlines() if line.startswith(("uniform:", "add uniform"))]  # verify's
        assert "not checked" in out and "--resume" in out and not table, out
        resume = os.path.join(d, [n for n in names if n.endswith(".resume.pt")][0])
        code, _, err = run_cli("--resume", resume, "--lr", "1", "--no-progress")
        assert code == 2 and "drop --lr" in err


# ============================================================================= model edge: TransformerLens forms,
# errors at the edge, hooks at absolute positions, checkpoints that always load, generation and --ask


def expect_value_error(fn, *words):
    """Call fn; it must raise one ValueError, on one line, whose message holds every word."""
    try:
        fn()
    except ValueError as e:
        assert all(w in str(e) for w in words) and "\n" not in str(e), (words, str(e))
        return str(e)
    raise AssertionError(f"no ValueError (expected one saying {words})")


def test_config_defaults_are_the_laptop_model():
    cfg = Config(n_digits=5)
    command, _ = resolve_flags()  # `python train.py`
    assert cfg == command and (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp) == (2, 3, 64, 16, 256)
    sparse = {}  # the measured sparse-operand shares: adders of 5 digits and more only; a flag wins
    for flags in (["--task", "add"], ["--task", "sub"], ["--task", "mix"], ["--digits", "6"], ["--digits", "10"],
                  ["--digits", "4"], ["--digits", "7"], ["--task", "sub", "--digits", "10"], ["--sparse-operands", "0"]):
        sparse[" ".join(flags)] = resolve_flags(*flags)[1].p_sparse
    assert sparse == {"--task add": 0.05, "--task sub": 0.0, "--task mix": 0.0, "--digits 6": 0.05, "--digits 10": 0.05,
                      "--digits 4": 0.0, "--digits 7": 0.05, "--task sub --digits 10": 0.0, "--sparse-operands 0": 0.0}
    for digits, layers in ((5, 2), (6, 3), (7, 3), (10, 3)):  # subtractors take 3 layers, 4 heads from 6 digits
        cfg, tc = resolve_flags("--task", "sub", "--digits", str(digits))
        assert (cfg.n_layers, cfg.n_heads, tc.steps) == (layers, layers + 1, int(4800 * 1.25 ** (digits - 5)))
    assert [resolve_flags("--digits", str(n))[1].steps for n in (1, 3, 4, 7)] == [2000, 2000, 2000, 3125]
    assert [(tc.batch_size, tc.steps) for tc in (resolve_flags()[1], resolve_flags("--batch-size", "256")[1],
                                                 resolve_flags("--task", "sub")[1])] == [(128, 4000), (256, 4000), (256, 4800)]
    cfg, tc = resolve_flags("--task", "mix", "--digits", "6")  # the measured 6-digit recipes, and a flag wins
    assert (cfg.n_layers, cfg.n_heads, tc.perc_sub, tc.mix_by, tc.steps, tc.lr) == (3, 4, 80, "question", 10_000, 3e-3)
    cfg, tc = resolve_flags("--task", "mix", "--digits", "6", "--layers", "2", "--mix-by", "batch", "--steps", "50")
    assert (cfg.n_layers, cfg.n_heads, tc.mix_by, tc.steps) == (2, 4, "batch", 50)
    cfg, tc = resolve_flags("--task", "sub", "--digits", "6")
    assert (cfg.n_layers, cfg.n_heads, tc.steps, tc.lr, tc.eps) == (3, 4, 6000, 3e-3, 1e-8)
    assert resolve_flags("--eps", "1e-6")[1].eps == 1e-6 and resolve_flags("--task", "sub")[0].n_layers == 2
    assert (resolve_flags()[1].amsgrad, resolve_flags("--amsgrad")[1].amsgrad) == (False, True)
    for digits, steps in ((5, 8000), (3, 8000), (7, 12_500)):  # mixed models take the 6-digit recipe at every size
        cfg, tc = resolve_flags("--task", "mix", "--digits", str(digits))
        assert (cfg.n_layers, cfg.n_heads, tc.perc_sub, tc.mix_by, tc.steps, tc.lr) == (3, 4, 80, "question", steps, 3e-3)
    assert resolve_flags("--task", "mix", "--perc-sub", "66")[1].perc_sub == 66 and resolve_flags("--task", "sub")[1].perc_sub == 100
    cfg, _ = resolve_flags("--preset", "add_d6_l2_h3_t15K")
    assert (cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.n_digits) == (510, 170, 2040, 6)  # the paper's sizes
    sd = small_model(d_model=40, d_head=7, d_mlp=50, n_heads=5).state_dict()
    got = model_lib.config_from_tl_state_dict(sd)  # nothing falls back to a default
    assert (got.d_model, got.d_head, got.d_mlp, got.n_heads, got.n_digits) == (40, 7, 50, 5, 3)


def test_amsgrad_reaches_the_optimizer():
    for ams in (False, True):
        model = small_model()
        tc = train.TrainConfig(task="add", n_digits=3, steps=2, batch_size=8, amsgrad=ams)
        state = train.train(model, tc, progress=False)["state"]["optimizer"]
        assert state["param_groups"][0]["amsgrad"] is ams
        assert all(("max_exp_avg_sq" in s) is ams for s in state["state"].values())


def test_names_filter_and_cache_shorthands():
    model = small_model()
    tokens = data.random_batch("add", 3, 4, torch.Generator().manual_seed(0))
    _, full = model.run_with_cache(tokens)
    for f in ("blocks.0.attn.hook_z", ["blocks.0.attn.hook_z"], lambda n: n == "blocks.0.attn.hook_z"):
        logits, cache = model.run_with_cache(tokens, names_filter=f)
        assert list(cache) == ["blocks.0.attn.hook_z"] and torch.equal(cache["z", 0], full["blocks.0.attn.hook_z"])
    assert list(model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")[1]) == ["blocks.1.hook_resid_post"]
    # TransformerLens' utils.get_act_name forms, each against the full name
    for key, name in [(("pattern", 0), "blocks.0.attn.hook_pattern"), (("z", 1), "blocks.1.attn.hook_z"),
                      (("resid_post", 1), "blocks.1.hook_resid_post"), (("post", 0), "blocks.0.mlp.hook_post"),
                      (("q", 0), "blocks.0.attn.hook_q"), (("resid_pre", 0), "blocks.0.hook_resid_pre"),
                      (("attn_out", 0), "blocks.0.hook_attn_out"), (("resid_mid", -1), "blocks.1.hook_resid_mid"),
                      (("attn", 1), "blocks.1.attn.hook_pattern"), (("attn_scores", 0), "blocks.0.attn.hook_attn_scores"),
                      (("pre", 1), "blocks.1.mlp.hook_pre"), (("mlp_out", 1), "blocks.1.hook_mlp_out"),
                      ("embed", "hook_embed"), ("pos_embed", "hook_pos_embed")]:
        if key[1:2] != (-1,):  # a negative layer is the cache's to resolve, as in TransformerLens
            assert model_lib.act_name(*((key,) if isinstance(key, str) else key)) == name
        assert full[key] is full[name], key
    for bad in (("z", 1), ("nonsense", 0), ("pattern", "0")):  # this cache holds only blocks.0.attn.hook_z
        try:
            cache[bad]
            assert False, bad
        except KeyError as e:
            assert "cache" in str(e) or "use a hook name" in str(e)
    for bad in ("blocks.0.attn.hook_zz", ["blocks.0.attn.hook_z", "nope"]):
        for call in (lambda: model.run_with_cache(tokens, names_filter=bad), lambda: model.run_with_hooks(tokens, [(bad, print)])):
            try:
                call()
                assert False, bad
            except KeyError as e:
                assert "no hook point named" in str(e)
    seen = []
    model.run_with_hooks(tokens, [(["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"], lambda x, hook: seen.append(hook.name))])
    assert seen == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]


def test_one_sequence_is_a_batch_of_one_and_bad_tokens_are_one_value_error():
    model = small_model()
    tokens = data.random_batch("add", 3, 4, torch.Generator().manual_seed(0))
    one = model(tokens[2])
    assert one.shape == (1, 13, 15) and torch.allclose(one, model(tokens)[2:3], atol=1e-6)
    assert model(tokens.int()).shape == (4, 13, 15)  # any integer dtype
    bad = tokens.clone()
    bad[1, 3] = 99
    expect_value_error(lambda: model(bad), "99", "0 to 14")
    bad[1, 3] = -1
    expect_value_error(lambda: model(bad), "-1", "0 to 14")
    expect_value_error(lambda: model(torch.zeros(2, 14, dtype=torch.long)), "n_ctx = 13", "(2, 14)")
    expect_value_error(lambda: model(tokens.float()), "integer", "float32")
    expect_value_error(lambda: model(tokens[None]), "(batch, positions)", "(1, 4, 13)")
    expect_value_error(lambda: model(tokens.tolist()), "integer tensor", "list")
    expect_value_error(lambda: model(tokens, [11, 12]), "slice")
    expect_value_error(lambda: model.generate(tokens[:, :9], 5), "max_new_tokens", "0..4")
    expect_value_error(lambda: data.encode("12a45+1"), "'a'", "position 2")
    expect_value_error(lambda: data.encode("1+2=3 "), "' '", "position 5")
    expect_value_error(lambda: data.decode(torch.tensor([1, 15])), "15", "0 to 14")


def test_hooks_see_absolute_positions_with_and_without_read():
    model = small_model(seed=3)
    tokens = data.random_batch("add", 3, 6, torch.Generator().manual_seed(2))
    read = data.logit_slice(3)  # positions 7..11
    for name, index in [("blocks.1.hook_resid_mid", (slice(None), 9)), ("blocks.1.attn.hook_q", (slice(None), 8, 1)),
                        ("blocks.1.attn.hook_pattern", (slice(None), 0, 10)), ("blocks.1.mlp.hook_post", (slice(None), 7)),
                        ("blocks.0.attn.hook_z", (slice(None), 5))]:
        shapes = []

        def patch(x, hook):
            shapes.append(x.shape)
            x = x.clone()
            x[index] = 0.0  # an absolute position: the same one with or without read
            return x
        with_read = model.run_with_hooks(tokens, [(name, patch)], read=read)
        without = model.run_with_hooks(tokens, [(name, patch)])[:, read]
        assert torch.equal(with_read, without), name
        assert not torch.allclose(with_read, model(tokens, read)), name  # the patch did change the logits
        axis = 2 if "pattern" in name else 1  # the query axis
        assert shapes[0][axis] == 12 and shapes[1][axis] == 13, (name, shapes)  # every position up to the last read
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: "hook_q" in n, read=read)
    assert cache["q", 1].shape == (6, 12, 3, 12)
    assert torch.equal(model(tokens, read), model(tokens)[:, read])  # the no-hook fast path: same logits


def test_checkpoint_info_becomes_plain_values_or_is_refused():
    import numpy as np
    model = small_model(seed=5)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.pt")
        save_model(path, model, final_loss=np.float64(1e-7), steps=np.int64(3), acc=torch.tensor(0.5),
                   curve=np.arange(3), nested={"x": [np.float32(2.5), (torch.tensor(7),)]}, table=torch.ones(2))
        _, info = load_model(path)
        assert info["final_loss"] == 1e-7 and type(info["final_loss"]) is float and type(info["steps"]) is int
        assert info["acc"] == 0.5 and info["curve"] == [0, 1, 2] and info["nested"] == {"x": [2.5, (7,)]}
        assert torch.equal(info["table"], torch.ones(2))
        for bad, where in [(dict(run=object()), "info['run']"), (dict(h={"f": [1, print]}), "info['h']['f'][1]")]:
            try:
                save_model(os.path.join(d, "bad.pt"), model, **bad)
                assert False, bad
            except CheckpointError as e:
                assert where in str(e) and "weights_only" in str(e) and "\n" not in str(e), str(e)
        assert os.listdir(d) == ["m.pt"]  # nothing written for the refused ones


D5_ADDER_6K = os.path.join(HERE, "checkpoints", "add_d5_l2_h3_t6K_s1.pt")


def test_generation_agrees_with_the_teacher_forced_check():
    import evaluate
    shipped, _ = load_model(D5_ADDER_6K)
    noisy, _ = load_model(D5_ADDER_6K)  # the control: a damaged copy that gets many answers wrong
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.02)  # ~1 in 4 wrong
    tokens = torch.cat([data.random_batch("add", 5, 500, torch.Generator().manual_seed(s), enrichment=bool(s))
                        for s in (0, 1)] + list(data.named_sets("add", 5).values()))
    questions = [q[:11] for q in data.decode(tokens)]  # '12345+67890'
    for model, wrong in ((shipped, False), (noisy, True)):
        ok, _, pred = evaluate.score(model, tokens, 5, with_loss=False)
        answers, probs = evaluate.ask(model, questions, "add")
        got = data.encode("".join(answers)).view(len(answers), 7)  # (B, n+2)
        right = (got == tokens[:, data.answer_slice(5)]).all(1)
        assert torch.equal(right, ok), "generation and teacher forcing disagree on which answers are right"
        assert bool((~ok).any()) == wrong, int((~ok).sum())  # the control really has wrong answers
        assert torch.equal(got[ok], pred[ok])
        # where an answer goes wrong, generation and teacher forcing pick the same first wrong token
        first = (pred != tokens[:, data.answer_slice(5)]).long().argmax(1)
        assert torch.equal(got[~ok].gather(1, first[~ok, None]), pred[~ok].gather(1, first[~ok, None]))
        with torch.no_grad():
            logits = model(tokens, data.logit_slice(5)).double().softmax(-1)  # (B, n+2, V), teacher forced
        want = logits.gather(2, tokens[:, data.answer_slice(5), None])[..., 0]
        assert torch.allclose(probs[ok], want[ok], atol=1e-5)
    assert evaluate.ask(shipped, ["99999+1", " 0 + 0 =", "00012+3"], "add")[0] == ["+100000", "+000000", "+000015"]
    one = shipped.generate(data.encode("12345+67890="), 7)  # a 1-D prompt: a batch of one
    assert one.shape == (1, 19) and data.decode(one[0]) == "12345+67890=+080235"


def test_parse_question_names_each_problem():
    import evaluate
    assert evaluate.parse_question(" 123 - 45 =", "sub", 3) == (123, "sub", 45)
    assert evaluate.parse_question("00099+1", "mix", 3) == (99, "add", 1)
    for q, task, words in [("12a+3", "add", "'12a' is not a number"), ("1234+1", "add", "4 digits; this is a 3-digit"),
                           ("5-3", "add", "'-' is not for an add model, which answers a+b"),
                           ("5*3", "mix", "'*' is not for a mix model, which answers a+b or a-b"),
                           ("123", "sub", "no operator"), ("-5+3", "add", "'-5' is not a number"),
                           ("5+", "add", "operand is missing"), ("1+2+3", "add", "'2+3' is not a number")]:
        expect_value_error(lambda: evaluate.parse_question(q, task, 3), repr(q), words)


def test_ask_cli_answers_reports_and_refuses_bad_questions():
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = train.main(["--checkpoint", D5_ADDER_6K, "--ask", "12345+67890", "12a45+1", "99999+1", "123456+1", "5-3"])
    lines = out.getvalue().splitlines()
    assert code == 2 and len(lines) == 2, (code, out.getvalue())
    assert lines[0].startswith("12345+67890 = 80235  right  S2  least sure: ") and "(p = " in lines[0]
    assert lines[1].startswith("99999+1 = 100000  right  S5  least sure: ")
    bad = err.getvalue().splitlines()
    assert len(bad) == 3 and all(b.startswith("train.py: bad question: ") for b in bad), bad
    assert "'12a45'" in bad[0] and "6 digits" in bad[1] and "'-'" in bad[2]
    # a wrong answer: a damaged model, saved as a checkpoint, exits 1 and says what was expected
    model, info = load_model(D5_ADDER_6K)
    with torch.no_grad():
        model.unembed.b_U[5] += 100.0  # every answer digit becomes 5
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "broken.pt")
        save_model(path, model, task="add")
        code, stdout, stderr = run_cli("--checkpoint", path, "--ask", "-", input="12345+67890\n\n11+11\n")
    assert code == 1 and stderr == "", (code, stderr)
    assert stdout.splitlines()[0].startswith("12345+67890 = ") and "WRONG, expected 80235" in stdout
    assert len(stdout.splitlines()) == 2  # the blank line is skipped
    import evaluate
    assert [evaluate.readable(s) for s in ("+080235", "-0530865", "+0000000", "-0000000", "5555555")] == \
        ["80235", "-530865", "0", "-0", "5555555"]  # '-0' is not '+0': the check compares every token
    for args in (["--ask", "1+1"], ["--checkpoint", D5_ADDER_6K, "--ask", "1+1", "--digits", "6"],
                 ["--checkpoint", D5_ADDER_6K, "--ask", "1+1", "--task", "sub"]):
        msg = cli_error(train.main, args)
        assert msg.startswith("train.py: error:") and len(msg.splitlines()) == 1, (args, msg)


# ============================================================================= analysis: nodes, node lists, outputs as data


def test_node_names_sites_and_node_list_layouts():
    import json
    from analyse import Node, read_nodes, write_nodes
    cfg = Config(n_digits=5, n_layers=2, n_heads=3, d_model=48, d_head=16, d_mlp=192)  # 19 positions
    head, mlp = Node(14, 0, 1), Node(14, 1, None)
    assert (head.name, mlp.name, head.component, mlp.component) == ("P14.L0.H1", "P14.L1.MLP", "L0H1", "L1MLP")
    assert (head.hook_name, head.index) == ("blocks.0.attn.hook_z", (14, 1)) and not head.is_mlp
    assert (mlp.hook_name, mlp.index) == ("blocks.1.mlp.hook_post", (14,)) and mlp.is_mlp
    assert Node.parse("P14.L0.H1") == Node.parse("P14L0H1") == head and Node.parse("P14.L1.MLP") == mlp
    assert sorted([mlp, Node(14, 1, 2), head, Node(3, 1, None)]) == [Node(3, 1, None), head, Node(14, 1, 2), mlp]
    # the reference's layout (head == n_heads is the MLP), the successor's, names, under "nodes" or not
    layouts = [[{"position": 14, "layer": 0, "head": 1, "tags": ["FailPerc.3"]}, {"position": 14, "layer": 1, "head": 3}],
               {"nodes": [{"position": 14, "layer": 0, "is_head": True, "num": 1, "tags": ["FailPerc.3"]},
                          {"position": 14, "layer": 1, "is_head": False, "num": 0}]},
               ["P14.L0.H1", "P14L1MLP"]]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "nodes.json")
        for i, layout in enumerate(layouts):
            with open(path, "w") as f:
                json.dump(layout, f)
            assert read_nodes(path, cfg) == {head: ["FailPerc.3"] if i < 2 else [], mlp: []}, layout
        write_nodes(path, {mlp: ["Impact.A1"], head: []}, cfg)
        assert json.load(open(path)) == [{"position": 14, "layer": 1, "head": 3, "tags": ["Impact.A1"]},
                                         {"position": 14, "layer": 0, "head": 1, "tags": []}]
        assert list(read_nodes(path, cfg)) == [mlp, head]  # file order is kept
        bad = [{"layer": 0, "head": 1}, [{"position": 19, "layer": 0, "head": 1}], [{"position": 1, "layer": 2, "head": 0}],
               [{"position": 1, "layer": 0, "head": 4}], [{"position": 1, "layer": 0, "head": True}], ["L0H1"],
               [{"position": 1, "layer": 0}], [{"position": 1, "layer": 0, "head": 1, "tags": "x"}], 3]
        for layout in bad:
            with open(path, "w") as f:
                json.dump(layout, f)
            try:
                read_nodes(path, cfg)
                raise AssertionError(f"accepted {layout}")
            except ValueError as e:
                assert str(e).startswith(path) and len(str(e).splitlines()) == 1, str(e)
        for text in ("P14.L0", "L0H1", "P1.L0.H", "x"):
            try:
                Node.parse(text)
                raise AssertionError(text)
            except ValueError as e:
                assert text in str(e)


def test_analysis_finds_the_same_nodes_and_algorithm_on_the_tiny_adder():
    """The analysis of the shipped tiny adder must find exactly what it found when the fixture was written:
    the same useful nodes and tags (nodes.json) and the same intervention tests (algorithm.json's tests)."""
    import json
    import report
    with open(os.path.join(HERE, "checkpoints", "tiny", "add_d3_l2_h3_t1K_s0_analysis.json")) as f:
        expected = json.load(f)
    with tempfile.TemporaryDirectory() as out:
        assert report.main([TINY_ADD3, "--out", out, "--questions", "128", "--no-progress",
                            "--only", "positions", "nodes", "algorithm"]) == 0
        with open(os.path.join(out, "nodes.json")) as f:
            assert json.load(f) == expected["nodes"]
        with open(os.path.join(out, "algorithm.json")) as f:
            assert json.load(f)["tests"] == expected["algorithm_tests"]
        with open(os.path.join(out, "positions.json")) as f:
            positions = json.load(f)
        useful = {nd["position"] for nd in expected["nodes"]}
        assert set(positions["useful"]) == useful and len(positions["positions"]) == 3 * 3 + 4


# ============================================================================= discovery: node-centric interventions


def _d5_adder():
    from model import load_model
    return load_model(os.path.join(HERE, "checkpoints", "add_d5_l2_h3_t6K_s1.pt"))[0].eval()


def test_discovery_planted_wrong_claim_fails_and_a_true_one_passes():
    import interventions as iv
    from analyse import Node
    model = _d5_adder()
    claim = iv.Claim(model, "SC", 5, 100, torch.Generator().manual_seed(0))  # the carry into A5
    assert len(claim) >= 90
    # P17 predicts A0 and comes after the position predicting A5: it cannot touch A5's carry
    wrong, right = [Node(17, 1, None)], [Node(12, 1, None)]
    r_wrong, r_right = iv.run_tests(model, claim, [wrong, right], iv.THRESHOLD)
    assert r_wrong["verdict"] == "none" and r_wrong["strong"] == 0 and r_wrong["pairs"] == iv.SCREEN
    assert r_right["verdict"] == "strong" and r_right["pairs"] == len(claim)
    # the decoy control can fail: a decoy that carried the sub-task (the store itself) rejects the claim
    claim.decoy, claim.caches = claim.store, {}
    assert iv.run_tests(model, claim, [right], iv.THRESHOLD)[0]["verdict"] == "decoy"


def test_discovery_controls_catch_a_node_that_cannot_matter():
    import json
    import algorithm
    import interventions as iv
    from analyse import Node, read_nodes
    model = load_model(TINY_ADD3)[0].eval()
    with tempfile.TemporaryDirectory() as out:
        path = os.path.join(out, "nodes.json")
        with open(path, "w") as f:
            json.dump(json.load(open(os.path.join(HERE, "checkpoints", "tiny", "add_d3_l2_h3_t1K_s0_analysis.json")))["nodes"], f)
        nodes = read_nodes(path, model.cfg)
    planted = Node(0, 0, 0)  # position 0 sees only the top digit D2: it can carry no sub-task
    nodes[planted] = []
    result = iv.discover(model, "add", nodes, n_pairs=100, seed=0, progress=False)
    assert result["nodes"][planted.name]["category"] == "none"
    assert not any(t["verdict"] in ("strong", "weak") for t in result["tests"] if planted.name in t["nodes"])
    ctl = result["controls"]
    assert ctl["unused"]["tests"] > 0 and ctl["unused"]["rate"] <= 2 and ctl["decoy"]["rate"] <= 2
    assert result["shares"]["MLPs"]["strong"] > 0  # the test can pass too
    json.dumps(result)  # JSON-able
    quiet = algorithm._threshold_sentence(result, 0.5)
    assert "lies 40 points above" in quiet and "reached the threshold" not in quiet
    loud = algorithm._threshold_sentence(result, 0.99)  # a control at 99%: said plainly, never "-9 points above"
    assert "A control reached the threshold" in loud and "points above" not in loud


def test_discovery_specific_and_combiner_split_on_a_constructed_case():
    import interventions as iv
    from analyse import Node
    claims = [{"claim": f"A{k}.{t}", "digit": k, "subtask": t, "column": None, "family": "add", "tested": True}
              for k, ts in ((2, ("SA", "SC", "SS", "ST")), (0, ("SA",))) for t in ts]
    test = lambda claim, nodes, verdict: {"claim": claim, "nodes": nodes, "verdict": verdict,  # noqa: E731
                                          "kind": "pair" if len(nodes) > 1 else "useful"}
    tests = [test("A2.SA", ["P15.L0.H1"], "strong")]                                    # SA only: specific
    tests += [test(f"A2.{t}", ["P15.L1.MLP"], "strong") for t in ("SA", "SC", "SS", "ST")]  # all four: combiner
    tests += [test("A0.SA", ["P17.L0.MLP"], "strong"),                                   # A0's only sub-task
              test("A2.SC", ["P15.L0.H0", "P15.L0.H2"], "strong"),                       # only together
              test("A2.SS", ["P15.L1.H0"], "weak"), test("A2.ST", ["P15.L1.H1"], "none")]
    names = ["P15.L0.H1", "P15.L1.MLP", "P17.L0.MLP", "P15.L0.H0", "P15.L0.H2", "P15.L1.H0", "P15.L1.H1"]
    result = {"claims": claims, "tests": tests}
    nodes = iv._node_purposes(result, {Node.parse(x): [] for x in names})
    assert [nodes[x]["category"] for x in names] == ["specific", "combiner", "combiner", "pair", "pair", "weak", "none"]
    shares = iv._shares(nodes)
    assert (shares["heads"]["useful"], shares["heads"]["strong"], shares["heads"]["specific"]) == (5, 3, 1)
    assert (shares["MLPs"]["strong"], shares["MLPs"]["combiner"]) == (2, 2)
    assert iv.algo_tags({"nodes": nodes})[Node.parse("P15.L0.H0")] == ["Algo.A2.SC+P15L0H2"]


def test_discovery_pairs_and_decoys_for_every_subtask():
    import framework
    n, gen = 4, torch.Generator().manual_seed(0)
    for t, k, j in __import__("interventions").claims_of("mix", n):
        store, alter, want, chain = framework.make_pairs(t, k, n, 40, gen, column=j, chain=True)
        assert len(store) == 40, (t, k, j)
        truth = alter[:, data.answer_slice(n)]
        assert ((want != truth).sum(1) == 1).all() and ((chain != truth).sum(1) >= 1).all(), (t, k, j)
        decoy = framework.make_decoys(t, k, n, alter, gen, j)
        assert torch.equal(decoy[:, n], alter[:, n]) and not torch.equal(decoy, alter), (t, k, j)
        if t == "OPR":
            assert (store[:, n] != alter[:, n]).all()
        elif t != "SGN":  # the decoy keeps exactly the digits the sub-task reads
            cols = framework._cols(t, k, n, j)
            for c in cols:
                for base in (0, n + 1):
                    assert torch.equal(decoy[:, base + n - 1 - c], alter[:, base + n - 1 - c])


def test_pca_labels_need_separated_classes_not_the_answer_sign():
    import algorithm
    from analyse import lda_accuracy
    g = torch.Generator().manual_seed(0)
    # three parallel, elongated, tilted clusters: a linear discriminant separates them, nearest centroid cannot
    labels = torch.arange(3).repeat_interleave(200)
    along = 10 * torch.randn(600, generator=g)
    Z = torch.stack([0.5 * labels + along, along], 1) + 0.05 * torch.randn(600, 2, generator=g)
    centroids = torch.stack([Z[labels == c].mean(0) for c in range(3)])
    nearest = (torch.cdist(Z, centroids).argmin(1) == labels).float().mean()
    assert lda_accuracy(Z, labels) > 0.95 and nearest < 0.8, (lda_accuracy(Z, labels), nearest)
    # tri-case questions of a subtraction's units column: a "head" that carries only the answer's sign is not
    # tri-state (nor bi-state), while one that carries the column's class is
    n = 3
    tokens, labels = algorithm.tricase_questions("sub", n, 0, 100, g)
    a, b, _, _ = data.parse_questions(tokens, n)
    assert torch.equal(labels, (a % 10 >= b % 10).long() + (a % 10 > b % 10).long())  # the class is column 0's
    assert len(set((a // 10).tolist())) > 50  # the other digits vary
    sign = (tokens[:, data.answer_slice(n).start] == data.MINUS).float()[:, None]          # (N, 1)
    noise = 0.01 * torch.randn(len(tokens), 16, generator=g)
    only_sign = torch.cat([sign, 1 - sign], 1) @ torch.randn(2, 16, generator=g) + noise  # (N, 16)
    assert algorithm.tricase_label(only_sign, labels)[0] == "none"
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    assert algorithm.tricase_label(one_hot @ torch.randn(3, 16, generator=g) + noise, labels)[0] == "tri"


def test_impact_strings_stay_unambiguous_at_ten_digits():
    from analyse import impact_digits, impact_value
    from plots import impact_text
    assert impact_value([3, 5, 4], 5) == "A543" and impact_digits("A543", 5) == [5, 4, 3]  # the reference's form
    for digits in ([11, 10, 1, 0], [10], [1, 0], []):  # a 10-digit model: the sign is digit 11
        assert impact_digits(impact_value(digits, 10), 10) == digits, digits
    assert impact_value([10], 9) == "A10" and impact_value([1, 0], 9) == "A1,0" and impact_digits("A", 5) == []
    assert impact_text({9, 10}, 9) == "A9,10" and impact_text({1, 0}, 9) == "A0,1" and impact_text({0, 1}, 5) == "A01"
    assert impact_text({0, 1, 2, 11}, 10) == "A0..2,11"


def test_project_imports_have_no_cycle():
    """Imports follow the data (model/data -> train -> analyse -> the steps -> reuse): the graph of the
    project's modules, every import statement counted except those under `if __name__ == "__main__":`,
    has no cycle."""
    import ast
    import glob
    modules = {os.path.basename(p)[:-3]: p for p in glob.glob(os.path.join(HERE, "*.py"))
               if not p.endswith("test_all.py")}
    graph = {}
    for name, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        main_guard = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
        skip = {id(n) for g in main_guard for n in ast.walk(g)}
        found = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module.split(".")[0])
        graph[name] = found & set(modules)

    def visit(name, path):
        assert name not in path, "import cycle: " + " -> ".join(path + [name])
        for other in graph[name]:
            visit(other, path + [name])
    for name in graph:
        visit(name, [])
    assert "report" in graph["algorithm"] or "analyse" in graph["report"]  # the graph was really read


def test_node_usage_command_on_a_checkpoint():
    import contextlib
    import io
    import re
    import reuse_nodes
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert reuse_nodes.main([TINY_ADD3, "--questions", "30", "--no-progress"]) == 0
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("(none)") and "acc 100.0% (" in lines[1], lines[1]
    rows = {m[1]: m for m in (re.match(r"(\S+) +(\d+) \( *([\d.]+)%\) +(\S+)", line) for line in lines[2:])}
    assert sorted(rows) == ["L0H0", "L0H1", "L0H2", "L0MLP", "L1H0", "L1H1", "L1H2", "L1MLP"]
    assert all(m[4] in ("add", "unused") and (m[4] == "add") == (int(m[2]) > 0) for m in rows.values())
    total = int(re.search(r"\((\d+)\)", lines[1])[1])  # correct answers: the count beside each share
    assert all(abs(100 * int(m[2]) / total - float(m[3])) < 0.06 for m in rows.values())
    assert rows["L0MLP"][4] == "add"
    for args in ([TINY_ADD3, "--layers", "2"], [TINY_ADD3, "--questions", "0"], [os.path.join(HERE, "missing.pt")]):
        msg = cli_error(reuse_nodes.main, args)
        assert msg.startswith("reuse_nodes.py: error:") and len(msg.splitlines()) == 1, (args, msg)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as help_text:
            reuse_nodes.main(["--help"])
    except SystemExit as e:
        assert e.code == 0 and "--min-correct" in help_text.getvalue()

_SAME_RUN = """
import hashlib, sys, torch
sys.path.insert(0, {here!r})
import train
from model import Transformer
torch.set_num_threads(2)
cfg, tc = train.resolve(train.build_parser().parse_args("--digits 3 --steps 12 --seed 7".split()), None)
model = Transformer(cfg, torch.Generator().manual_seed(7))
h = train.train(model, tc, progress=False)
w = torch.cat([p.detach().flatten() for p in model.parameters()])
print(repr(h["loss"]), hashlib.sha256(w.numpy().tobytes()).hexdigest())
"""


def test_same_seed_same_numbers_across_processes_with_two_threads():
    import subprocess
    env = dict(os.environ, OMP_NUM_THREADS="2")
    code = _SAME_RUN.format(here=HERE)
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.count(",") == 11


def test_loss_rise_finds_a_jump_after_warm_up_and_ignores_one_during_it():
    import bench
    calm = [1.0 / (1 + t) for t in range(200)]  # falling all the way: never above its running minimum
    assert bench.loss_rise(calm, skip=20) == (1.0, 0)
    spiked = list(calm)
    spiked[150:160] = [1.0] * 10  # 10 steps at ~150x the loss around them
    rise, above = bench.loss_rise(spiked, skip=20)
    assert 50 < rise < 100 and 20 <= above <= 29  # the 20-step mean: ~10/20 of 150x, over 29 windows
    early = list(calm)
    early[5:15] = [10.0] * 10  # a jump inside the warm-up is not counted
    assert bench.loss_rise(early, skip=40) == (1.0, 0) and bench.loss_rise(calm[:10], skip=0) == (1.0, 0)


def test_describe_names_the_cpu_instruction_set_and_the_loss_scaled_rate():
    p = train.build_parser()
    cfg, tc = train.resolve(p.parse_args(["--task", "add", "--digits", "5"]), p)
    text = artefacts.describe(cfg, tc, "cpu", 1, 2)
    assert f"device cpu ({torch.backends.cpu.get_cpu_capability()}), 2 thread(s)" in text
    assert "cosine x sqrt(min(1, loss / 0.003))" in text and "10% of additions with a carry into a 7 or 8" in text
    assert artefacts.cpu_note("cuda") == ""  # a GPU's kernels do not depend on the host's instruction set


def test_bench_sweep_records_each_seed_and_a_rerun_skips_finished_ones():
    import contextlib
    import io
    import bench
    flags = ["--task", "add", *TINY[:-3], "--until-verified", "--check-every", "10", "--questions", "200"]
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()) as log:
        assert bench.main(["--seeds", "2", *flags, "--results", d]) == 0
        (name,) = os.listdir(d)
        first = open(os.path.join(d, name)).read().splitlines()
        assert [json.loads(line)["seed"] for line in first] == [1, 2]
        assert bench.main(["--seeds", "3", *flags, "--results", d]) == 0
        lines = open(os.path.join(d, name)).read().splitlines()
        assert lines[:2] == first and json.loads(lines[2])["seed"] == 3  # seeds 1 and 2 were not trained again
        assert set(json.loads(lines[2])["errors"]) >= {"add uniform", "Add.rule", "Add.sparse"}
        assert json.loads(lines[2])["loss_rise"][0] >= 1 and "above its running minimum" in log.getvalue()
        assert "2 seed(s) done before" in log.getvalue() and " of 3 seeds verified" in log.getvalue()
        assert "seed 1 (from the results file):" in log.getvalue() and "seed 3 (from" not in log.getvalue()
        assert bench.main(["--seeds", "1", *flags, "--lr", "3e-3", "--results", d]) == 0  # the default lr
        assert os.listdir(d) == [name] and len(open(os.path.join(d, name)).read().splitlines()) == 3  # the same run
        with mock.patch.dict(train.MEASURED, {("add", 1): dict(lr=1e-3)}):  # a default changes, the flags do not
            assert bench.main(["--seeds", "1", *flags, "--results", d]) == 0
        assert len(os.listdir(d)) == 2  # a new file: the old results were not taken for the new default
        with mock.patch("torch.backends.cpu.get_cpu_capability", return_value="ANOTHER"):  # another instruction set
            assert bench.main(["--seeds", "1", *flags, "--results", d]) == 0
        assert len(os.listdir(d)) == 3  # sums in another order: another run, not these results
        assert json.loads(lines[0])["cpu"] == torch.backends.cpu.get_cpu_capability() and json.loads(lines[0])["threads"] >= 1
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()) as log:
        assert bench.main(["--seeds", "2", "--first-seed", "2", *flags, "--results", d]) == 0  # a second process
        (name,) = os.listdir(d)
        assert [json.loads(line)["seed"] for line in open(os.path.join(d, name))] == [2]
        assert "seed 1: not finished" in log.getvalue() and "not finished: seed 1" in log.getvalue()
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()) as log:
        assert bench.main(["--seeds", "1", *flags, "--results", d]) == 0
        (name,) = os.listdir(d)
        path, real = os.path.join(d, name), train.train
        seed1 = open(path).read()
        os.remove(path)

        def beside(*a, **k):  # another process finishes seed 1 while this one trains seed 2
            with open(path, "a") as f:
                f.write(seed1)
            return real(*a, **k)
        train.train = beside
        try:
            assert bench.main(["--seeds", "2", "--first-seed", "2", *flags, "--results", d]) == 0
        finally:
            train.train = real
        summary = log.getvalue().splitlines()[-1]
        assert "of 2 seeds verified" in summary and "not finished" not in summary  # seed 1 counted at the end
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()) as log:  # sweeps that overlap
        assert bench.main(["--seeds", "2", "--first-seed", "2", *flags, "--results", d]) == 0
        path = os.path.join(d, os.listdir(d)[0])
        seed2, trained = open(path).read(), []
        os.remove(path)

        def overlap(*a, **k):  # another process finishes seed 2 while this one trains seed 1
            trained.append(1)
            with open(path, "a") as f:
                f.write(seed2)
            return real(*a, **k)
        train.train = overlap
        try:
            assert bench.main(["--seeds", "2", *flags, "--results", d]) == 0
        finally:
            train.train = real
        assert len(trained) == 1 and sorted(json.loads(line)["seed"] for line in open(path)) == [1, 2]  # not again
        assert "seed 2 (from the results file):" in log.getvalue() and "seed 1 (from" not in log.getvalue()
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()) as log:  # every question
        assert bench.main(["--seeds", "1", *flags[:-1], "all", "--results", d]) == 0
        (row,) = map(json.loads, open(os.path.join(d, os.listdir(d)[0])))
        assert row["questions"] == "all" and "add all" in row["errors"] and "add uniform" not in row["errors"]
        assert "every question per operation + named sets" in log.getvalue()
        assert "(every question per operation and every named set)" in log.getvalue()
    assert "drop --seed" in cli_error(bench.main, ["--seeds", "2", "--seed", "4"])
    for args, says in ((["--seeds", "-1"], "--seeds must be 0"), (["--first-seed", "2"], "goes with --seeds"),
                       (["--seeds", "2", "--first-seed", "3"], "--first-seed 3: must be between 1 and --seeds"),
                       (["--questions", "all"], "--questions all goes with --seeds K"),
                       (["--seeds", "1", "--digits", "4", "--questions", "all"], "--questions all needs at most 3 digits"),
                       (["--seeds", "1", "--questions", "lots"], "'lots' is not a whole number or 'all'")):
        msg = cli_error(bench.main, args)
        assert says in msg and msg.startswith("bench.py: error:") and len(msg.splitlines()) == 1, (args, msg)
    assert "unknown device 'tpu'" in cli_error(bench.main, ["--seeds", "1", "--device", "tpu"])


# ============================================================================= the algorithm in words (report opening)


def _words_case():
    """A constructed discovery on the 3-digit adder's positions (A2 at 9, A1 at 10, A0 at 11) and its nodes."""
    import interventions as iv
    from analyse import Node
    claims = [{"claim": f"A{k}.{t}", "digit": k, "subtask": t, "column": None, "family": "add", "tested": t != "ST"}
              for k, ts in ((2, ("SA", "SC", "SS", "ST")), (1, ("SA", "SC")), (0, ("SA",))) for t in ts]
    test = lambda claim, nodes, verdict: {"claim": claim, "nodes": nodes, "verdict": verdict,  # noqa: E731
                                          "kind": "pair" if len(nodes) > 1 else "useful"}
    tests = [test("A2.SA", ["P9.L0.H1"], "strong"), test("A2.SC", ["P9.L0.H0", "P9.L0.H2"], "strong")]
    tests += [test(f"A2.{t}", ["P9.L1.MLP"], "strong") for t in ("SA", "SC", "SS")]  # every tested one: combiner
    tests += [test("A1.SA", ["P10.L0.MLP"], "strong"), test("A1.SC", ["P10.L1.H0"], "weak"),  # nobody passes A1.SC
              test("A0.SA", ["P11.L0.MLP"], "strong")]
    tags = {Node.parse(x): [] for x in ("P9.L0.H0", "P9.L0.H2", "P9.L1.MLP", "P10.L0.MLP", "P10.L1.H0", "P11.L0.MLP")}
    tags[Node.parse("P9.L0.H1")] = ["Attn.0=48", "Attn.4=47", "Attn.7=3"]  # D2, D'2 and (under 10%, unnamed) =
    result = {"claims": claims, "tests": tests, "threshold": 0.9}
    result["nodes"] = iv._node_purposes(result, tags)
    return result, tags


def test_algorithm_in_words_names_the_passing_nodes_and_the_gaps():
    import algorithm
    cfg = Config(n_digits=3)
    result, tags = _words_case()
    text = algorithm.algorithm_in_words(result, tags, cfg, "add")
    lines = {ln.split("**")[1]: ln for ln in text.splitlines() if ln.startswith("- **")}
    assert list(lines) == ["A2", "A1", "A0"] and "**SA** base add" in text and "90%" in text
    assert "(predicted at position 9)" in lines["A2"]
    assert "SA is done by P9.L0.H1 (reads `D2` 48%, `D'2` 47%)" in lines["A2"] and "`=`" not in lines["A2"]
    assert "SC is done by P9.L0.H0 and P9.L0.H2 together" in lines["A2"] and "SS only by the combiner" in lines["A2"]
    assert "ST was not tested" in lines["A2"] and "P9.L1.MLP combines them" in lines["A2"]
    assert "SA is done by P10.L0.MLP" in lines["A1"] and "no single node or pair was found for SC" in lines["A1"]
    assert "P10.L1.H0" not in text  # a weak pass is no purpose
    assert lines["A0"].endswith("SA is done by P11.L0.MLP.")  # A0's one sub-task: its combiner simply does it
    # the text follows the measurements: plant a pass of A1.SC and the gap is gone, the node named
    result["tests"].append({"claim": "A1.SC", "nodes": ["P10.L1.H0"], "verdict": "strong", "kind": "useful"})
    import interventions as iv
    result["nodes"] = iv._node_purposes(result, tags)
    text = algorithm.algorithm_in_words(result, tags, cfg, "add")
    assert "no single node or pair was found" not in text and "SC is done by P10.L1.H0" in text


def test_report_opens_with_the_algorithm_in_words_or_names_the_command():
    import report
    from analyse import write_nodes, write_json
    with tempfile.TemporaryDirectory() as out:
        args = [TINY_ADD3, "--out", out, "--questions", "64", "--no-progress", "--only", "accuracy"]
        assert report.main(args) == 0
        text = open(os.path.join(out, "report.md")).read()
        assert "has not run here" in text and f"`python analyse.py {TINY_ADD3} --only nodes algorithm`" in text
        result, tags = _words_case()
        write_json(os.path.join(out, "algorithm.json"), result)
        write_nodes(os.path.join(out, "nodes.json"), tags, load_model(TINY_ADD3)[0].cfg)
        assert report.main(args) == 0
        text = open(os.path.join(out, "report.md")).read()
        assert text.startswith("# Analysis of add_d3_l2_h3_t1K_s0\n\n## The algorithm in words\n")
        assert "SA is done by P9.L0.H1 (reads `D2` 48%" in text and "has not run here" not in text
        assert text.index("The algorithm in words") < text.index("| checkpoint |")


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
