"""
Your code: one stub per exercise of coursework/README.md. Fill one in (delete its `raise NotImplementedError`),
then check it from the repository root:

    python -m coursework 3      # PASS, or the first mismatch and a hint
    python -m coursework        # every exercise, one line each, and whether it is solved

Each stub's docstring gives the shapes in and out. Import whatever you need from the project (data, model,
train, ...) at the top of this file; the checkers never look at anything here but the ten functions.
"""


def ex1_read_answer(tokens, n_digits):
    """tokens (B, 3n+4) whole questions, e.g. encode('12345+33333=+045678') -> (B,) int64 signed answers
    read from the answer tokens `sign A(n)..A0` (45678 here; -249990 for '550030-800020=-0249990')."""
    raise NotImplementedError


def ex2_attention(attn, x):
    """attn: a model.Attention (W_Q, W_K, W_V [H, C, D], b_Q, b_K, b_V [H, D], mask [P, P] bool);
    x: (B, P, C), the output of the block's ln1. Returns (pattern (B, H, P, P) query x key, rows summing
    to 1 over the keys a query may see, and z (B, P, H, D) = pattern @ v per head)."""
    raise NotImplementedError


def ex3_answer_nll(logits, tokens, n_digits):
    """logits (B, P, V) of whole questions, tokens (B, P) -> (B, n+2): the negative log-probability the model
    gives each true answer token (sign, A(n)..A0), and nothing else."""
    raise NotImplementedError


def ex4_cascade_length(tokens, n_digits):
    """Addition questions (B, P) -> (B,) int64: -1 when no column makes a carry (sum >= 10); else the largest
    number of sum-9 columns directly above a carry-making column, which pass its carry on (cap at 4)."""
    raise NotImplementedError


def ex5_complexity(tokens, n_digits):
    """Addition or subtraction questions (B, P) -> (B,) int64 index into data.COMPLEXITY
    (S0..S5, M0..M4+, N1..N4+), as defined in data.complexity's docstring and EXERCISES.md."""
    raise NotImplementedError


def ex6_ablate_head(model, tokens, means, position, layer, head):
    """Mean-ablate one head at one position: replace hook_z[:, position, head] of `layer` by
    means[f'blocks.{layer}.attn.hook_z'][position, head] (analyse.layer_means). Returns wrong (B, n+2)
    bool: which answer tokens (sign, A(n)..A0) the model now gets wrong (argmax != true token)."""
    raise NotImplementedError


def ex7_pca(X, k):
    """X (N, C) -> (projections (N, k), components (k, C) unit rows, explained-variance ratios (k,)),
    by hand with torch.linalg.svd. Each component is defined up to its sign."""
    raise NotImplementedError


def ex8_patch(model, store, alter, nodes):
    """Interchange intervention: run `alter` (B, P) with the activation of every node (position, layer, head)
    copied from the run of `store` (B, P), question by question; head == n_heads means the MLP (hook_post),
    else the head's hook_z. Returns the predicted answer tokens (B, n+2)."""
    raise NotImplementedError


def ex9_grow(src, n_layers, n_heads):
    """A new Transformer with src's config but n_layers layers and n_heads heads (>= src's), src's weights
    inserted into its first layers and heads, that answers every question exactly as src does."""
    raise NotImplementedError


def ex10_carry_node(model):
    """Open-ended: the node (position, layer, head) -- or a list of at most two -- of the 6-digit addition
    model that computes the carry cascaded into answer digit A5 (head == n_heads means the MLP)."""
    raise NotImplementedError
