"""The seed paper's training recipe, re-implemented in plain PyTorch.

Zhu et al. (2024), "Towards a Theoretical Understanding of the 'Reversal Curse' via Training Dynamics"; code
marlo-z/reversal_curse_analysis (``train_reverse.py``, ``GPT2CustomModel.py``). Their model is Hugging Face's
``GPT2LMHeadModel`` built from a ``GPT2Config`` with every other setting at its default; their loop is::

    for epoch in range(num_epochs):                      # DataLoader(train, batch_size=64, shuffle=True)
        for batch in loader:
            optimizer.zero_grad(); out, word_probs = model(batch, labels=batch)   # loss on the last word only
            out.loss.backward(); optimizer.step()                               # AdamW(lr 0.01, betas (0.9, 0.999))
        model.eval(); for batch in val_loader: model(batch)                      # per-epoch held-out pass

What is the same here: GPT-2's architecture at ``n_layer`` / ``n_embd`` / ``n_head`` (pre-LN blocks, fused QKV,
``gelu_new`` MLP of width 4 ``n_embd``, learned positions, final LayerNorm, unembedding tied to the token
embedding, LayerNorm eps 1e-5, dropout 0.1 on embeddings, attention weights and residual branches), GPT-2's
initialisation (normal std 0.02, output projections std 0.02 / sqrt(2 n_layer), zero biases), AdamW with torch's
defaults otherwise (weight decay 0.01), batch 64 drawn from a fresh shuffle each epoch, cross-entropy on the
answer tokens only, the per-batch answer probabilities the seed computes for its curves, and the per-epoch pass
over the held-out statements.

What differs, on purpose: the data are revinterp's :class:`~revinterp.data.FactSet` statements (the seed's split
design, revinterp's draw), with the seed's token layout ``subject relation answer`` (no BOS) over revinterp's
vocabulary (the seed's vocabulary also holds 400 unused tokens); the per-batch answer probabilities are gathered
with one vectorised call instead of a Python loop of ``.item()`` per example (cheaper than the seed: the
comparison favours it); and after each epoch the fit criterion of :class:`revinterp.training.TrainingConfig`
(every trained split at accuracy 100 % and mean p(answer) >= 0.99, accuracy as the arg max over the vocabulary)
is checked in eval mode, which the seed code does not do, so that "time to fit" means the same for both.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor, nn

from revinterp.data import FactSet


@dataclass(frozen=True)
class SeedRecipe:
    """The seed code's model and optimiser settings (``train_reverse.py`` defaults, at a chosen size)."""

    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    batch_size: int = 64
    max_epochs: int = 3000
    fit_probability: float = 0.99
    seed: int = 0


class SeedGPT2(nn.Module):
    """GPT-2 (``GPT2LMHeadModel``'s computation) with a tied unembedding; ``forward`` returns logits."""

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
        return self.ln_f(x) @ self.wte.weight.T  # lm_head tied to wte, no bias


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
    """How a seed-recipe training ended: the model, steps and epochs taken, whether it fitted, CPU and wall time."""

    model: SeedGPT2
    steps: int
    epochs: int
    fitted: bool
    cpu_seconds: float
    wall_seconds: float
    history: list[dict] = field(default_factory=list)


def seed_tokens(facts: FactSet, statements) -> tuple[Int[Tensor, "n seq"], int]:
    """Token ids in the seed's layout (``subject relation answer``, no BOS) over ``facts``' vocabulary, and the
    number of answer tokens (the seed's ``word_size``: the loss is on the last that many positions)."""
    index = {word: i for i, word in enumerate(facts.vocabulary())}
    rows = [[index[word] for word in facts.text(s).split()] for s in statements]
    lengths, answer_lengths = {len(r) for r in rows}, {len(s.object.split()) for s in statements}
    if len(lengths) != 1 or len(answer_lengths) != 1:
        raise ValueError("the seed recipe takes statements of one length with answers of one length (its "
                         f"word_size); got statement lengths {sorted(lengths)}, answer lengths "
                         f"{sorted(answer_lengths)}")
    return torch.tensor(rows), answer_lengths.pop()


def train_seed_recipe(facts: FactSet, recipe: SeedRecipe = SeedRecipe(), *, device=None) -> SeedRecipeResult:
    """Train the seed recipe on ``facts``' trained statements until every trained split is fitted (checked after
    each epoch) or ``recipe.max_epochs``; the time counts everything from model construction to the stop."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    torch.manual_seed(recipe.seed)
    train_tokens, answer_length = seed_tokens(facts, facts.train)
    train_tokens = train_tokens.to(device)
    splits = {name: seed_tokens(facts, facts.split(name))[0].to(device) for name in facts.split_names}
    trained = [name for name in splits if facts.split(name)[0].trained]
    held_out = [splits[name] for name in splits if name not in trained]
    model = SeedGPT2(recipe, len(facts.vocabulary()), train_tokens.shape[1]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=recipe.betas,
                                  weight_decay=recipe.weight_decay)
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
        model.eval()
        with torch.no_grad():
            for tokens in held_out:  # the seed's per-epoch validation pass
                for chunk in tokens.split(recipe.batch_size):
                    model(chunk)
            record = {"epoch": epoch, "step": steps, "splits": {
                name: _fit_metrics(model, splits[name], answer_length) for name in trained}}
        record["fitted"] = all(m["accuracy"] == 1.0 and m["probability"] >= recipe.fit_probability
                               for m in record["splits"].values())
        history.append(record)
        if record["fitted"]:
            fitted = True
            break
    return SeedRecipeResult(model=model.eval(), steps=steps, epochs=epoch, fitted=fitted,
                            cpu_seconds=time.process_time() - start_cpu,
                            wall_seconds=time.perf_counter() - start_wall, history=history)


def _fit_metrics(model: SeedGPT2, tokens: Int[Tensor, "n seq"], answer_length: int) -> dict:
    """Accuracy (every answer token the arg max over the vocabulary) and mean p(answer) of one split."""
    logp = model(tokens)[:, -answer_length - 1:-1].log_softmax(-1)
    answers = tokens[:, -answer_length:]
    correct = (logp.argmax(-1) == answers).all(-1)
    probability = logp.gather(-1, answers[..., None])[..., 0].sum(-1).exp()
    return {"accuracy": correct.float().mean().item(), "probability": probability.mean().item()}
