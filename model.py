"""
A small decoder-only transformer, written out by hand, with TransformerLens-style hook points.

    from model import Config, Transformer
    import data
    model = Transformer(Config(n_digits=5))           # the laptop model: 2 layers, 3 heads, d_model 64
    tokens = data.encode("12345+67890=+080235")        # (P,): one question is a batch of one
    logits = model(tokens)                             # (1, P, V), as TransformerLens returns it
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    cache["pattern", 0]                                # = cache["blocks.0.attn.hook_pattern"]: (1, H, P, P)
    model.generate(data.encode("12345+67890="), max_new_tokens=7)   # greedy answer: (1, P + 7)

It is the pre-LayerNorm GPT of TransformerLens' `HookedTransformer` with the settings the papers used:
learned token and position embeddings, per-head W_Q/W_K/W_V/W_O with biases, explicit causal attention,
a ReLU MLP, LayerNorm (eps 1e-5) before attention, before the MLP and before the unembedding, and
GPT-2 initialisation (every W_* ~ N(0, 0.8/sqrt(d_model)), biases 0). Parameter names equal
TransformerLens' state-dict names, so the papers' published weights load unchanged (`load_model`).

As in TransformerLens, a hook filter (`names_filter`, `fwd_hooks` targets) is one name, a list or a
predicate, and the cache also answers `cache["z", 1]`, `cache["resid_post", -1]`, `cache["post", 0]` (MLP),
`cache["embed"]`. Bad tokens (ids outside 0..d_vocab-1, over n_ctx positions, floats) raise one ValueError.

Left out on purpose: dropout (the papers use none), rotary/other position schemes, sampling and
key-value caching in `generate` (answers are a few tokens long), and hooks on the LayerNorms.

Shape legend: B batch, P position (n_ctx), H heads, D d_head, C d_model, M d_mlp, V d_vocab.
"""
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- config


@dataclass
class Config:
    n_digits: int = 5        # digits per operand; the question is `D..D op D'..D' = sign A..A`
    n_layers: int = 2        # transformer blocks
    n_heads: int = 3         # attention heads per block
    d_model: int = 64        # width of the residual stream (the papers': 510, in train.PRESETS)
    d_head: int = 16         # width of one head; n_heads * d_head need not equal d_model (papers: 170)
    d_mlp: int = 256         # hidden width of the MLP (papers: 2040)
    d_vocab: int = 15        # tokens 0-9 + - = * \ (see data.py)
    act_fn: str = "relu"     # the papers use ReLU; "gelu" is accepted for experiments
    ln_eps: float = 1e-5     # LayerNorm epsilon, as in TransformerLens
    n_ctx: int = field(init=False)  # 3 * n_digits + 4, derived below so it can never go stale

    def __post_init__(self):
        self.n_ctx = 3 * self.n_digits + 4
        if self.act_fn not in ("relu", "gelu"):
            raise ValueError(f"act_fn must be relu or gelu, not {self.act_fn!r}")

    @property
    def init_std(self) -> float:
        return 0.8 / self.d_model ** 0.5  # TransformerLens' "gpt2" initializer_range

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return cls(**{k: v for k, v in d.items() if k != "n_ctx"})


def pick_device(name: str = "auto") -> torch.device:
    """'auto' is CUDA when present, else the CPU. MPS only on request: it has given silently wrong
    results in TransformerLens, and models this small are usually faster on the CPU anyway."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was asked for but MPS is not available")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda or mps)")
    return torch.device(name)

# ----------------------------------------------------------------------------- hook points


class HookPoint:
    """An identity on an activation that hook functions can read or replace.

    A hook is `fn(tensor, hook) -> tensor or None`; a returned tensor replaces the activation.
    A plain object rather than an nn.Module so that, with no hook attached, it costs one `if`."""

    def __init__(self):
        self.name = None  # set by Transformer, e.g. "blocks.0.attn.hook_z"
        self.fns = []

    def __call__(self, x):
        for fn in self.fns:
            out = fn(x, self)
            if out is not None:
                x = out
        return x


# TransformerLens' short activation names (utils.get_act_name): which module a name lives in, and aliases
_ATTN_NAMES = {"q", "k", "v", "z", "result", "pattern", "attn_scores"}
_MLP_NAMES = {"pre", "post"}
_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "query": "q", "key": "k", "value": "v",
            "mlp_pre": "pre", "mlp_post": "post"}


def act_name(name: str, layer: int = None) -> str:
    """A hook name from TransformerLens' shorthand, as its `utils.get_act_name` builds it:
    ("pattern", 0) -> "blocks.0.attn.hook_pattern", ("resid_post", 1) -> "blocks.1.hook_resid_post",
    ("post", 0) -> "blocks.0.mlp.hook_post", ("embed",) -> "hook_embed". A full name comes back unchanged."""
    if "." in name or name.startswith("hook_"):
        return name
    name = _ALIASES.get(name, name)
    where = "attn." if name in _ATTN_NAMES else "mlp." if name in _MLP_NAMES else ""
    return ("" if layer is None else f"blocks.{layer}.") + where + "hook_" + name


class ActivationCache(dict):
    """{hook name: activation} from `run_with_cache`, which, like TransformerLens' ActivationCache, also
    answers `cache["z", 1]`, `cache["resid_post", -1]` (layers count from the end) and `cache["embed"]`."""

    def __init__(self, activations: dict, n_layers: int):
        super().__init__(activations)
        self.n_layers = n_layers

    def __getitem__(self, key):
        if isinstance(key, str) and dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        name, layer = (key, None) if isinstance(key, str) else (tuple(key) + (None,))[:2]
        if not isinstance(name, str) or (layer is not None and not isinstance(layer, int)):
            raise KeyError(f"{key!r}: use a hook name or (short name, layer), e.g. ('pattern', 0)")
        full = act_name(name, None if layer is None else layer + self.n_layers if layer < 0 else layer)
        if not dict.__contains__(self, full):
            raise KeyError(f"{full!r} is not in the cache ({len(self)} activations cached; "
                           f"names_filter decides which)")
        return dict.__getitem__(self, full)


def _params(**tensors) -> nn.Module:
    """A module holding only parameters, so state-dict keys read `embed.W_E` as in TransformerLens."""
    m = nn.Module()
    for name, t in tensors.items():
        setattr(m, name, nn.Parameter(t))
    return m

# ----------------------------------------------------------------------------- layers


def layer_norm_by_hand(x, w, b, eps):
    """What LayerNorm computes, written out: centre, divide by the root mean square, scale and shift."""
    x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()  # (B, P, 1)
    return x / scale * w + b


class LayerNorm(nn.Module):
    """`layer_norm_by_hand` over the last axis, run as PyTorch's fused kernel: the same numbers (tested),
    and the hand-written version cost a third of a CPU training step for models this small."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.eps = cfg.ln_eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(self, x):  # (B, P, C) -> (B, P, C)
        return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        H, C, D = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(H, C, D))
        self.W_K = nn.Parameter(torch.empty(H, C, D))
        self.W_V = nn.Parameter(torch.empty(H, C, D))
        self.W_O = nn.Parameter(torch.empty(H, D, C))
        self.b_Q = nn.Parameter(torch.zeros(H, D))
        self.b_K = nn.Parameter(torch.zeros(H, D))
        self.b_V = nn.Parameter(torch.zeros(H, D))
        self.b_O = nn.Parameter(torch.zeros(C))
        causal = torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool))
        self.register_buffer("mask", causal, persistent=False)  # (P, P), True where a query may look
        for name in ("q", "k", "v", "attn_scores", "pattern", "z", "result"):
            setattr(self, "hook_" + name, HookPoint())

    def forward(self, x, read=slice(None)):  # x: (B, P, C) after ln1
        """Queries only at positions `read` (all by default; fewer when only some logits are read)."""
        B, P, C = x.shape
        H, D = self.W_Q.shape[0], self.W_Q.shape[2]
        # one matmul for all heads' q, k and v: (C, 3*H*D)
        W = torch.cat([self.W_Q, self.W_K, self.W_V]).permute(1, 0, 2).reshape(C, 3 * H * D)
        b = torch.cat([self.b_Q, self.b_K, self.b_V]).reshape(3 * H * D)
        q, k, v = torch.addmm(b, x.flatten(0, 1), W).view(B, P, 3, H, D).unbind(2)  # each (B, P, H, D)
        q, k, v = self.hook_q(q[:, read]), self.hook_k(k), self.hook_v(v)  # q: (B, Q, H, D)
        scores = q.transpose(1, 2) @ k.permute(0, 2, 3, 1) / D ** 0.5  # (B, H, Q, P): query x key
        scores = scores.masked_fill(~self.mask[:P, :P][read], float("-inf"))
        scores = self.hook_attn_scores(scores)
        pattern = self.hook_pattern(scores.softmax(dim=-1))  # (B, H, Q, P), rows sum to 1
        z = self.hook_z((pattern @ v.transpose(1, 2)).transpose(1, 2))  # (B, Q, H, D)
        # Per-head outputs only when someone hooks them: summing them is the same sum as the fused
        # matmul below, in another order, so logits agree to float rounding (~1e-6), not bit for bit.
        if self.hook_result.fns:
            result = self.hook_result(torch.einsum("bqhd,hdc->bqhc", z, self.W_O))  # (B, Q, H, C)
            return result.sum(2) + self.b_O
        return z.flatten(2) @ self.W_O.reshape(H * D, C) + self.b_O  # (B, Q, C)


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act = F.relu if cfg.act_fn == "relu" else F.gelu
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x):  # (B, P, C) -> (B, P, C)
        pre = self.hook_pre(torch.addmm(self.b_in, x.flatten(0, 1), self.W_in).view(*x.shape[:2], -1))  # (B, P, M)
        post = self.hook_post(self.act(pre))  # (B, P, M)
        return torch.addmm(self.b_out, post.flatten(0, 1), self.W_out).view(x.shape)  # (B, P, C)


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.ln1, self.attn, self.ln2, self.mlp = LayerNorm(cfg), Attention(cfg), LayerNorm(cfg), MLP(cfg)
        for name in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"):
            setattr(self, "hook_" + name, HookPoint())

    def forward(self, resid, read=slice(None)):  # (B, P, C) -> (B, Q, C), Q the positions read
        resid = self.hook_resid_pre(resid)
        resid = self.hook_resid_mid(resid[:, read] + self.hook_attn_out(self.attn(self.ln1(resid), read)))
        return self.hook_resid_post(resid + self.hook_mlp_out(self.mlp(self.ln2(resid))))

# ----------------------------------------------------------------------------- the model


class Transformer(nn.Module):
    def __init__(self, cfg: Config, generator: torch.Generator = None):
        super().__init__()
        self.cfg = cfg
        self.embed = _params(W_E=torch.empty(cfg.d_vocab, cfg.d_model))
        self.pos_embed = _params(W_pos=torch.empty(cfg.n_ctx, cfg.d_model))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg)
        self.unembed = _params(W_U=torch.empty(cfg.d_model, cfg.d_vocab), b_U=torch.zeros(cfg.d_vocab))
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        # name every hook point after its module path: "blocks.1.attn.hook_pattern"
        self.hook_dict = {}
        for mod_name, mod in self.named_modules():
            for attr, hp in vars(mod).items():
                if isinstance(hp, HookPoint):
                    hp.name = f"{mod_name}.{attr}" if mod_name else attr
                    self.hook_dict[hp.name] = hp
        last = f"blocks.{cfg.n_layers - 1}."
        self.last_block_hooks = [hp for n, hp in self.hook_dict.items() if n.startswith(last)]  # see forward
        self.init_weights(generator)

    def init_weights(self, generator: torch.Generator = None):
        """GPT-2 init as TransformerLens does it: W_* ~ N(0, 0.8/sqrt(d_model)), biases 0, LN (1, 0)."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.split(".")[-1].startswith("W_"):
                    p.normal_(0.0, self.cfg.init_std, generator=generator)
                elif name.endswith(".w"):
                    p.fill_(1.0)
                else:
                    p.zero_()

    def forward(self, tokens, read=slice(None)):  # tokens: (B, P) or (P,) ints -> logits (B, P, V)
        """Logits (B, P, V) for ids (B, P); one sequence (P,) gives (1, P, V). With `read` (a slice of
        positions) only those logits are computed: earlier layers run on every position up to the last one
        read (later ones cannot change them), the last block's queries, MLP and unembedding only where
        logits are read (training and the 1M-question check use it). A hook on the last block makes that
        shortcut step aside, so every hook sees each position up to the last one read at its absolute
        index. ValueError for bad tokens (`check_tokens`) or a `read` that is not a slice."""
        tokens = self.check_tokens(tokens)
        if not isinstance(read, slice) or read.step not in (None, 1):
            raise ValueError(f"read must be a slice of positions such as slice(11, 18), not {read!r}")
        if read.stop is not None and 0 < read.stop < tokens.shape[1]:
            tokens = tokens[:, :read.stop]  # causal: later positions cannot change the logits that are read
        B, P = tokens.shape
        last_read = slice(None) if any(hp.fns for hp in self.last_block_hooks) else read
        pos = self.pos_embed.W_pos[:P].expand(B, P, self.cfg.d_model)  # a view, as TransformerLens shapes it
        resid = self.hook_embed(self.embed.W_E[tokens]) + self.hook_pos_embed(pos)  # (B, P, C)
        for i, block in enumerate(self.blocks):
            resid = block(resid, last_read if i == len(self.blocks) - 1 else slice(None))
        logits = self.ln_final(resid) @ self.unembed.W_U + self.unembed.b_U  # (B, Q, V)
        return logits if last_read is read else logits[:, read]

    def check_tokens(self, tokens) -> torch.Tensor:
        """Token ids (B, P) or (P,) -> int64 (B, P); ValueError naming what is wrong and what is expected."""
        V, n_ctx = self.cfg.d_vocab, self.cfg.n_ctx
        if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.is_complex() \
                or tokens.dtype == torch.bool:
            what = f"{tokens.dtype} tensor" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be an integer tensor of ids 0..{V - 1}, not a {what}")
        tokens = tokens[None] if tokens.dim() == 1 else tokens  # one sequence is a batch of one, as in TL
        if tokens.dim() != 2 or not 1 <= tokens.shape[1] <= n_ctx:
            raise ValueError(f"tokens must have shape (batch, positions) or (positions,) with 1 to n_ctx = "
                             f"{n_ctx} positions; got shape {tuple(tokens.shape)}")
        if tokens.numel():
            lo, hi = torch.aminmax(tokens)  # one pass; the only check that reads the values
            if lo < 0 or hi >= V:
                bad = lo if lo < 0 else hi
                raise ValueError(f"token id {int(bad)} is outside the vocabulary: ids run from 0 to {V - 1}")
        return tokens.long()

    # --- hooks, TransformerLens style

    def names_matching(self, names_filter) -> list:
        """The hook names a filter selects: None (every one), one name, a list of names, or a predicate on
        names. A string is always one name. KeyError for a name that is no hook point."""
        if names_filter is None:
            return list(self.hook_dict)
        if callable(names_filter):
            return [n for n in self.hook_dict if names_filter(n)]
        wanted = [names_filter] if isinstance(names_filter, str) else list(dict.fromkeys(names_filter))
        for n in wanted:
            if n not in self.hook_dict:
                raise KeyError(f"no hook point named {n!r} (names read like 'blocks.0.attn.hook_z')")
        return wanted

    @contextmanager
    def hooks(self, fwd_hooks):
        """`with model.hooks([(names_filter, fn), ...]):` attaches hooks and always removes them. The filter
        is one name, a list or a predicate (`names_matching`); `fn(activation, hook)` may return a replacement."""
        attached = []
        try:
            for target, fn in fwd_hooks:
                for name in self.names_matching(target):
                    self.hook_dict[name].fns.append(fn)
                    attached.append((self.hook_dict[name], fn))
            yield self
        finally:
            for hp, fn in attached:
                hp.fns.remove(fn)

    def run_with_hooks(self, tokens, fwd_hooks=(), read=slice(None)):
        with self.hooks(fwd_hooks):
            return self(tokens, read)

    def run_with_cache(self, tokens, names_filter=None, fwd_hooks=(), read=slice(None)):
        """Returns (logits, cache): an `ActivationCache` of the detached activations that `names_filter`
        selects (see `names_matching`)."""
        cache = {}

        def save(x, hook):
            cache[hook.name] = x.detach()

        with self.hooks(list(fwd_hooks) + [(self.names_matching(names_filter), save)]):
            logits = self(tokens, read)
        return logits, ActivationCache(cache, self.cfg.n_layers)

    # --- generation

    @torch.inference_mode()
    def generate(self, tokens, max_new_tokens: int, return_probs: bool = False):
        """Greedy decoding, as TransformerLens' `generate(..., do_sample=False)`: append the most likely
        next token `max_new_tokens` times, each step run on the prompt and everything generated so far
        (no teacher forcing). tokens: a prompt (B, P) or (P,), P + max_new_tokens <= n_ctx.
        Returns tokens (B, P + N); with `return_probs` also probs (B, N), float64, each chosen token's
        softmax probability. Ties go to the lower token id, as argmax breaks them in the teacher-forced check."""
        tokens = self.check_tokens(tokens)
        room = self.cfg.n_ctx - tokens.shape[1]  # n_ctx minus the prompt's length
        if not 0 <= max_new_tokens <= room:
            raise ValueError(f"max_new_tokens must lie in 0..{room} (n_ctx {self.cfg.n_ctx}), not {max_new_tokens}")
        probs = []
        for _ in range(max_new_tokens):
            P = tokens.shape[1]
            logits = self(tokens, slice(P - 1, P))[:, 0]  # (B, V): the next token's logits only
            nxt = logits.argmax(-1)  # (B,)
            probs.append(logits.double().softmax(-1).gather(1, nxt[:, None])[:, 0])  # float64: p near 1
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)  # (B, P + 1)
        if not return_probs:
            return tokens
        return tokens, torch.stack(probs, 1) if probs else torch.zeros(len(tokens), 0, dtype=torch.float64)

# ----------------------------------------------------------------------------- checkpoints: loading


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit; the message names the file."""


def config_from_tl_state_dict(sd: dict) -> Config:
    """Infer the config of a TransformerLens state dict (the papers' published .pth) from tensor shapes."""
    H, C, D = sd["blocks.0.attn.W_Q"].shape
    n_ctx = sd["pos_embed.W_pos"].shape[0]
    if (n_ctx - 4) % 3:
        raise CheckpointError(f"n_ctx {n_ctx} is not 3*n_digits+4: only the Math token format (with a sign) is supported")
    n_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    return Config(n_digits=(n_ctx - 4) // 3, n_layers=n_layers, n_heads=H, d_model=C, d_head=D,
                  d_mlp=sd["blocks.0.mlp.W_in"].shape[1], d_vocab=sd["embed.W_E"].shape[0])


def load_model(path, device=None):
    """Load a checkpoint written by `artefacts.save_model`, or a TransformerLens-format state
    dict. Returns (model in eval mode, info dict). Never unpickles code (weights_only=True)."""
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(ckpt).__name__}")
    try:
        if "state_dict" in ckpt and "config" in ckpt:
            cfg, sd, info = Config.from_dict(ckpt["config"]), ckpt["state_dict"], dict(ckpt.get("info", {}))
        elif "embed.W_E" in ckpt:
            sd = {k: v for k, v in ckpt.items() if not k.endswith(("attn.mask", "attn.IGNORE"))}
            cfg, info = config_from_tl_state_dict(sd), {"source": "transformer_lens"}
        else:
            raise CheckpointError(f"{path}: neither a verified-arithmetic checkpoint nor a TransformerLens state dict")
        model = Transformer(cfg)
        model.load_state_dict(sd, strict=True)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: does not fit the model ({first})") from None
    info["config"] = asdict(cfg)
    return model.to(device or "cpu").eval(), info
