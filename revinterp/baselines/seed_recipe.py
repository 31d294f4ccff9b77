"""The seed paper's training recipe and data generator, re-implemented in plain PyTorch and NumPy.

Zhu et al. (2024), "Towards a Theoretical Understanding of the 'Reversal Curse' via Training Dynamics"; code
marlo-z/reversal_curse_analysis (``train_reverse.py``, ``GPT2CustomModel.py``, ``ReverseDataset.py``). Their model is
Hugging Face's ``GPT2LMHeadModel`` built from a ``GPT2Config`` with every other setting at its default; their loop
is::

    for epoch in range(num_epochs):                      # DataLoader(train, batch_size=64, shuffle=True)
        for batch in loader:
            optimizer.zero_grad(); out, word_probs = model(batch, labels=batch)   # loss on the last word only
            out.loss.backward(); optimizer.step()                               # AdamW(lr 0.01, betas (0.9, 0.999))
        model.eval(); for batch in val_loader: model(batch)                      # per-epoch held-out pass

What is the same here: GPT-2's architecture at ``n_layer`` / ``n_embd`` / ``n_head`` (pre-LN blocks, fused QKV,
``gelu_new`` MLP of width 4 ``n_embd``, learned positions, final LayerNorm, LayerNorm eps 1e-5, dropout 0.1 on
embeddings, attention weights and residual branches), GPT-2's initialisation (normal std 0.02, output projections
std 0.02 / sqrt(2 n_layer), zero biases), AdamW with torch's defaults otherwise (weight decay 0.01), batch 64 drawn
from a fresh shuffle each epoch, cross-entropy on the answer tokens only, the per-batch answer probabilities the
seed computes for its curves, and the per-epoch pass over the held-out statements, and an unembedding *not* tied to
the token embedding: ``GPT2CustomLMHeadModel.__init__`` calls ``GPT2LMHeadModel.__init__`` (which ties ``lm_head``
to its transformer's ``wte``) and then replaces ``self.transformer`` with a new ``GPT2CustomModel``, so ``lm_head``
stays tied to the discarded transformer's embedding and the trained ``wte`` is a separate matrix (both initialised
at std 0.02; tested with ``transformers``: after ``_from_config``, ``lm_head.weight is not
transformer.wte.weight``). :func:`seed_code_facts` draws the seed generator's own split (its NumPy calls in order,
so its seed 1234 gives its split). The model is tested against Hugging Face's ``GPT2LMHeadModel``.

What differs, on purpose: the statements are revinterp's :class:`~revinterp.data.FactSet` (any fact set, in the
seed's token layout ``subject relation answer``); the per-batch answer probabilities are gathered with one
vectorised call instead of a Python loop of ``.item()`` per example (cheaper than the seed: the comparison favours
it); and after each epoch every split is scored in eval mode (accuracy as the arg max over the vocabulary, mean
p(answer) and mean log p(answer)) and the fit criterion of :class:`revinterp.training.TrainingConfig` (every trained
split at accuracy 100 % and mean p(answer) >= 0.99) is checked, which the seed code does not do, so that "time to
fit" means the same for both. The switches of :class:`SeedRecipe` (``unused_tokens``, ``bos``, ``dropout``,
``initializer_range``, ``tied_embeddings``) move the recipe one setting at a time towards revinterp's model
(``analyses/seed_code_comparison.py``).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor, nn

from revinterp.data import FactSet
from revinterp.data.facts import check_relations, split_facts
from revinterp.data.generators import relation_pair

SEED_CODE_SEED = 1234
"""The seed code's default ``--seed`` (its data draw and its torch seed)."""


@dataclass(frozen=True)
class SeedRecipe:
    """The seed code's model and optimiser settings (``train_reverse.py`` defaults, at a chosen size).

    ``unused_tokens``: vocabulary rows that no statement uses (the seed's vocabulary of 802 leaves 400 unused; 0
    here by default, as revinterp's). ``bos``: prepend a BOS token (revinterp's layout; the seed has none).
    ``tied_embeddings``: the unembedding is the token embedding (plain GPT-2's default; neither the seed code's
    model, see the module docstring, nor revinterp's ties them).
    ``max_steps``: stop after that many optimiser steps (None: ``max_epochs`` epochs); ``stop_when_fitted``: stop
    after the first epoch at which every trained split is fitted.
    """

    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    unused_tokens: int = 0
    bos: bool = False
    tied_embeddings: bool = False
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    batch_size: int = 64
    max_epochs: int = 3000
    max_steps: int | None = None
    stop_when_fitted: bool = True
    fit_probability: float = 0.99
    seed: int = 0

    def __post_init__(self):
        for name, low in (("unused_tokens", 0), ("max_epochs", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r}: expected a whole number >= {low}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise ValueError(f"max_steps={self.max_steps!r}: expected a whole number >= 1, or None (max_epochs)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout!r}: expected a probability in [0, 1)")


class SeedGPT2(nn.Module):
    """GPT-2 (``GPT2LMHeadModel``'s computation) with its own unembedding (no bias), or the token embedding as the
    unembedding with ``recipe.tied_embeddings``; ``forward`` returns logits."""

    def __init__(self, recipe: SeedRecipe, vocab_size: int, n_positions: int):
        super().__init__()
        if recipe.d_model % recipe.n_heads:
            raise ValueError(f"d_model={recipe.d_model} is not divisible by n_heads={recipe.n_heads}")
        self.recipe = recipe
        self.wte = nn.Embedding(vocab_size, recipe.d_model)
        self.wpe = nn.Embedding(n_positions, recipe.d_model)
        self.drop = nn.Dropout(recipe.dropout)
        self.blocks = nn.ModuleList(SeedBlock(recipe) for _ in range(recipe.n_layers))
        self.ln_f = nn.LayerNorm(recipe.d_model, eps=recipe.layer_norm_eps)
        self.lm_head = None if recipe.tied_embeddings else nn.Linear(recipe.d_model, vocab_size, bias=False)
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2's scaled init of the residual projections
            for proj in (block.attn_proj, block.mlp_proj):
                nn.init.normal_(proj.weight, std=recipe.initializer_range / math.sqrt(2 * recipe.n_layers))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.recipe.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: Int[Tensor, "batch seq"]) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.drop(self.wte(tokens) + self.wpe(positions))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return x @ self.wte.weight.T if self.lm_head is None else self.lm_head(x)  # no bias either way


class SeedBlock(nn.Module):
    """GPT-2 block: x + drop(attn(ln_1 x)), then x + drop(mlp(ln_2 x))."""

    def __init__(self, recipe: SeedRecipe):
        super().__init__()
        d = recipe.d_model
        self.n_heads = recipe.n_heads
        self.ln_1 = nn.LayerNorm(d, eps=recipe.layer_norm_eps)
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d, eps=recipe.layer_norm_eps)
        self.mlp_in = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)
        self.dropout = recipe.dropout

    def forward(self, x: Tensor) -> Tensor:
        batch, seq, d = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(d, dim=-1)
        q, k, v = (t.view(batch, seq, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.n_heads)
        mask = torch.ones(seq, seq, dtype=torch.bool, device=x.device).triu(1)
        pattern = F.dropout(scores.masked_fill(mask, float("-inf")).softmax(-1), self.dropout, self.training)
        attended = (pattern @ v).transpose(1, 2).reshape(batch, seq, d)
        x = x + F.dropout(self.attn_proj(attended), self.dropout, self.training)
        hidden = F.gelu(self.mlp_in(self.ln_2(x)), approximate="tanh")  # gelu_new
        return x + F.dropout(self.mlp_proj(hidden), self.dropout, self.training)


@dataclass
class SeedRecipeResult:
    """How a seed-recipe training ended: the model, steps and epochs taken, whether it fitted, CPU and wall time,
    and one record per epoch (``{"epoch", "step", "splits": {name: {accuracy, probability, log_probability}},
    "fitted"}``, every split scored in eval mode)."""

    model: SeedGPT2
    steps: int
    epochs: int
    fitted: bool
    cpu_seconds: float
    wall_seconds: float
    history: list[dict] = field(default_factory=list)


def seed_code_facts(seed: int = SEED_CODE_SEED, *, vocab_size: int = 800, word_size: int = 1,
                    split_ratio: float = 0.7) -> FactSet:
    """The seed generator's draw (``generate_reverse_dataset``), its NumPy calls in their order, as a fact set.

    Two disjoint alphabets of ``vocab_size // 4`` token ids are drawn from ``0 .. vocab_size - 1`` (shifted by the
    two arrow tokens), ``2 * alphabet`` words of ``word_size`` tokens are sampled from each alphabet's tuples and
    paired; a shuffled ``split_ratio`` of the pairs is trained both ways, and for each other pair a fair coin trains
    its forward (``x -> y``) or its backward (``y <- x``) statement and holds out the other. Token id ``i`` is the
    word ``t{i}``. The seed keeps at most 100 trained and 50 one-way pairs when ``word_size`` is 3; so does this.
    ``source["unused_tokens"]`` counts the seed vocabulary's tokens that no statement uses (400 at the defaults).
    """
    import numpy as np

    alphabet = vocab_size // 4
    if alphabet < 1 or word_size < 1:
        raise ValueError(f"vocab_size={vocab_size}, word_size={word_size}: expected vocab_size >= 4 and "
                         "word_size >= 1")
    rng = np.random.RandomState(seed)  # the seed calls np.random.seed(seed), then the global functions
    reserved = 2  # '->' and '<-'
    x_alphabet, y_alphabet = rng.choice(vocab_size, (2, alphabet), replace=False) + reserved
    x_words = np.array(list(itertools.product(x_alphabet, repeat=word_size)))
    y_words = np.array(list(itertools.product(y_alphabet, repeat=word_size)))
    rng.shuffle(x_words)
    rng.shuffle(y_words)
    size = min(len(x_words), round(2 * alphabet))
    x_words = x_words[rng.choice(len(x_words), size=size, replace=False)]
    y_words = y_words[rng.choice(len(y_words), size=size, replace=False)]
    order = np.arange(size)
    rng.shuffle(order)
    cutoff = round(size * split_ratio)
    both, one_way = list(order[:cutoff]), list(order[cutoff:])
    if word_size == 3:
        both, one_way = both[:100], one_way[:50]
    forward_kept = [bool(rng.randint(2)) for _ in one_way]  # 1: the forward statement is moved to training
    kept = both + one_way
    splits = ["both"] * len(both) + ["reverse_held_out" if f else "forward_held_out" for f in forward_kept]
    forward, backward = relation_pair(0, 1, "symbolic")
    relations = check_relations([forward, backward])

    def word(tokens) -> str:
        return " ".join(f"t{int(t)}" for t in tokens)

    facts = [(word(x_words[i]), forward.name, word(y_words[i])) for i in kept]
    used = {t for x, _, y in facts for t in f"{x} {y}".split()}
    statements = split_facts(facts, relations, fact_splits=splits)
    source = dict(generator="seed_code_facts", seed=seed, vocab_size=vocab_size, word_size=word_size,
                  split_ratio=split_ratio, unused_tokens=vocab_size - len(used))
    return FactSet(relations=relations, statements=statements, source=source)


def seed_tokens(facts: FactSet, statements, *, bos: bool = False) -> tuple[Int[Tensor, "n seq"], int]:
    """Token ids in the seed's layout (``subject relation answer``, no BOS unless ``bos``: then id
    ``len(vocabulary)``) over ``facts``' vocabulary, and the number of answer tokens (the seed's ``word_size``: the
    loss is on the last that many positions)."""
    vocabulary = facts.vocabulary()
    index = {word: i for i, word in enumerate(vocabulary)}
    rows = [[len(vocabulary)] * bos + [index[word] for word in facts.text(s).split()] for s in statements]
    lengths, answer_lengths = {len(r) for r in rows}, {len(s.object.split()) for s in statements}
    if len(lengths) != 1 or len(answer_lengths) != 1:
        raise ValueError("the seed recipe takes statements of one length with answers of one length (its "
                         f"word_size); got statement lengths {sorted(lengths)}, answer lengths "
                         f"{sorted(answer_lengths)}")
    return torch.tensor(rows), answer_lengths.pop()


def train_seed_recipe(facts: FactSet, recipe: SeedRecipe = SeedRecipe(), *, device=None) -> SeedRecipeResult:
    """Train the seed recipe on ``facts``' trained statements until every trained split is fitted (checked after
    each epoch, with ``recipe.stop_when_fitted``), ``recipe.max_steps`` or ``recipe.max_epochs``; the time counts
    everything from model construction to the stop."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    torch.manual_seed(recipe.seed)
    train_tokens, answer_length = seed_tokens(facts, facts.train, bos=recipe.bos)
    train_tokens = train_tokens.to(device)
    splits = {name: seed_tokens(facts, facts.split(name), bos=recipe.bos)[0].to(device) for name in facts.split_names}
    trained = [name for name in splits if facts.split(name)[0].trained]
    vocab_size = len(facts.vocabulary()) + recipe.bos + recipe.unused_tokens
    model = SeedGPT2(recipe, vocab_size, train_tokens.shape[1]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=recipe.betas,
                                  weight_decay=recipe.weight_decay)
    max_steps = math.inf if recipe.max_steps is None else recipe.max_steps
    steps, history, fitted = 0, [], False
    for epoch in range(1, recipe.max_epochs + 1):
        model.train()
        for rows in torch.randperm(len(train_tokens)).split(recipe.batch_size):
            batch = train_tokens[rows.to(device)]
            optimizer.zero_grad()
            logits = model(batch)[:, -answer_length - 1:-1]
            answers = batch[:, -answer_length:]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), answers.reshape(-1))
            # the seed's per-batch curve: p(answer word) = product over its tokens
            logits.detach().softmax(-1).gather(-1, answers[..., None]).prod(1).log().tolist()
            loss.backward()
            optimizer.step()
            steps += 1
            if steps >= max_steps:
                break
        model.eval()
        with torch.no_grad():  # the seed's per-epoch validation pass, here over every split
            record = {"epoch": epoch, "step": steps, "splits": {
                name: _split_metrics(model, tokens, answer_length, recipe.batch_size)
                for name, tokens in splits.items()}}
        record["fitted"] = all(record["splits"][name]["accuracy"] == 1.0
                               and record["splits"][name]["probability"] >= recipe.fit_probability
                               for name in trained)
        history.append(record)
        fitted = record["fitted"]
        if (fitted and recipe.stop_when_fitted) or steps >= max_steps:
            break
    return SeedRecipeResult(model=model.eval(), steps=steps, epochs=epoch, fitted=fitted,
                            cpu_seconds=time.process_time() - start_cpu,
                            wall_seconds=time.perf_counter() - start_wall, history=history)


def _split_metrics(model: SeedGPT2, tokens: Int[Tensor, "n seq"], answer_length: int, batch_size: int) -> dict:
    """Accuracy (every answer token the arg max over the vocabulary), mean p(answer) and mean log p(answer) of one
    split, in batches of the seed's size."""
    logprob, correct = [], []
    for chunk in tokens.split(batch_size):
        logp = model(chunk)[:, -answer_length - 1:-1].log_softmax(-1)
        answers = chunk[:, -answer_length:]
        correct.append((logp.argmax(-1) == answers).all(-1))
        logprob.append(logp.gather(-1, answers[..., None])[..., 0].sum(-1))
    logprob = torch.cat(logprob)
    return {"accuracy": torch.cat(correct).float().mean().item(), "probability": logprob.exp().mean().item(),
            "log_probability": logprob.mean().item()}
