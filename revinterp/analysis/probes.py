"""Linear probes for the identity of the answer entity in the residual stream at a statement's prompt.

Is ``A_i`` readable from the model's activations when it reads ``<bos> B_i <-``? A linear probe (Alain &
Bengio 2016, "Understanding intermediate layers using linear classifier probes") fitted on the reverse
statements the model was trained on (``reverse_seen``) and tested on the held-out ones (``reverse_held_out``)
answers it at every layer and prompt position. The mirror probe reads ``B_i`` at ``<bos> A_i ->``.

**The probe must name classes it never saw.** In the seed data every entity answers one statement, so the
held-out answers are classes absent from the probe's training data, and a plain classifier (one free weight vector per
class) has nothing to score them with. The probe is therefore a label-embedding probe
(:mod:`revinterp.analysis.probing`): ``score(x, a) = z^T W t_a`` for the standardised activation ``z`` and a fixed
vector ``t_a`` of each entity that exists whether or not the probe saw it, fitted on the training classes and
decoded among all ``M`` candidate answers (every object of the relation, as in the behavioural evaluation), so
chance is ``1 / M``. The targets ``t_a`` (``target=``), centred over the candidates and scaled to unit norm:

- ``"unembed"``: the answer's unembedding ``W_U[:, a]``, the direction the model itself reads
  the answer out along; the probe then asks whether the activation points at ``a`` in the model's output
  space, up to a linear map learned on the seen pairs, which does transfer to unseen classes (a
  trained model's final residual stream decodes the seen answers' classes it was not probed on, see
  :attr:`ProbeResult.cross_val_accuracy`).
- ``"embed"`` (default): the answer's input embedding ``W_E[a]``, a learned representation of ``a`` (trained
  whenever ``a`` is a subject somewhere) that the model never needs to produce at this prompt. In the
  seed's 2-layer run no activation maps onto it in a way that transfers across entities (cross-validated
  accuracy 0 everywhere), so read it beside ``"unembed"``, not instead of it.
- ``"random_code"``: a fixed random Gaussian code per entity. It shares no structure with the model, so
  a probe can decode an unseen class with it only by chance: on held-out classes it is a built-in
  negative control; on classes the probe saw it is a plain classifier.

Multi-token entities get the concatenation of their tokens' vectors. The candidates are every object of the probed
statements' relations (with several relations, their union). The fitted ``W`` only moves along differences of the
training targets, so with fewer training classes than target dimensions some of each unseen target is lost (the
seed's 2-layer run has 140 training classes for 128 dimensions; the `tiny` test run 28 for 64, and still decodes
unseen seen-pair classes far above chance).

**Where, and what is the headline.** A probe at the final residual stream with unembedding targets is the logit
lens up to a linear map: it restates behaviour. The defaults therefore read the intermediate sites (``hook="sites"``:
each layer's ``resid_pre``, ``attn_out`` and ``mlp_out``, at every prompt position, the subject's included) with the
input-embedding targets. Per site, :attr:`ProbeResult.selectivity` is Hewitt & Liang's selectivity on
cross-validation over the training (seen) statements: the task's accuracy minus that of the control task (the same
probe on the classes relabelled by a random but consistent permutation, same folds). The headline site,
:attr:`ProbeResult.selected_site`, is the most selective one on that cross-validation, never chosen on the test split;
it carries its held-out test accuracy with an exact Clopper-Pearson interval and a binomial p-value against chance.
:meth:`ProbeResult.selectivity_frame` has every site. ``hook="resid", target="unembed"`` gives the former defaults.

**Controls.** Chance ``1 / M``; the same probe fitted on shuffled entity assignments (the training labels
permuted: Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks"), whose training
accuracy measures what the probe can memorise (with ``d_model`` features and about as many rows, a lot)
and whose test accuracy must sit at chance; and a positive control, ``cv_folds``-fold cross-validation over
the training statements: each seen pair decoded by a probe that never saw its answer class, among the
same ``M`` candidates. Held-out accuracy is to be judged against that cross-validated accuracy (same
unseen-class regime, same chance), not against the training accuracy.

**Embedding starvation.** In the seed data the subject ``B_i`` of a held-out reverse statement is an input
nowhere in training, so its embedding stays at its random initial value and nothing at its position can
carry ``A_i``: chance-level held-out accuracy there says little about the learned map. Run the probe on
a fact set in which every entity is also a subject elsewhere (the starvation control of the design notes)
as well, and compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from revinterp.analysis.probing import (
    DEFAULT_WEIGHT_DECAY,
    answer_ranks,
    fit_identity_probe,
    normalize_targets,
    top1_correct,
)
from revinterp.data import (
    CHAIN_COMPOSED_HELD_OUT,
    CHAIN_COMPOSED_SEEN,
    FORWARD_HELD_OUT,
    FORWARD_SEEN,
    REVERSE_HELD_OUT,
    REVERSE_SEEN,
    FactSet,
    Statement,
    encode_statements,
)
from revinterp.data.tokenizer import encode_words
from revinterp.models import unpack_run
from revinterp.stats import Estimate, bootstrap_ci, clopper_pearson, error_bars

__all__ = [
    "DEFAULT_SPLITS", "HOOKS", "PROBE_DIRECTIONS", "TARGETS", "ProbeResult", "SelectedSite", "probe_answer_identity",
]

PROBE_DIRECTIONS = ("forward", "reverse", "composed")
"""What is probed: the answer of reverse, forward or composed (chain) statements."""
TARGETS = ("unembed", "embed", "random_code")
"""The per-entity target vectors ``t_a`` (see the module docstring)."""
HOOKS = ("sites", "resid", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
"""``"sites"`` (default): per layer its ``resid_pre``, ``attn_out`` and ``mlp_out`` (no final residual stream, where
a probe restates the output); ``"resid"``: the residual stream before each layer and after the last one
(``n_layers + 1`` depths); the others: that hook of every layer (``n_layers`` depths)."""

DEFAULT_SPLITS = {
    "reverse": ((REVERSE_SEEN,), (REVERSE_HELD_OUT,)),
    "forward": ((FORWARD_SEEN,), (FORWARD_HELD_OUT,)),
    "composed": ((CHAIN_COMPOSED_SEEN,), (CHAIN_COMPOSED_HELD_OUT,)),
}
"""(train splits, test splits) per direction."""


# == the result ===================================================================================
@dataclass(frozen=True)
class SelectedSite:
    """The probe site chosen on cross-validation over the training statements, and how it does on the test split.

    Attributes:
        depth: index into :attr:`ProbeResult.depth_labels`.
        position: the prompt position (``<bos>`` = 0).
        layer: its depth label (``"L1 resid_pre"``).
        position_label: its position label (``"subject"``).
        selectivity: cross-validated task accuracy minus the control task's, the criterion it was chosen on.
        cross_val_accuracy: the task's cross-validated accuracy there (the positive control: seen pairs whose answer
            class the fold's probe never saw); ``cross_val_hits`` of ``n_cross_val`` statements.
        control_cross_val_accuracy: the control task's.
        test: test accuracy on the held-out statements with its exact (Clopper-Pearson) 95 % interval.
        test_hits: correct test statements.
        chance: ``1 / M``.
        p_value: one-sided exact binomial p-value of ``test_hits`` or more at chance.
        n_sites: how many sites the choice was among.
    """

    depth: int
    position: int
    layer: str
    position_label: str
    selectivity: float
    cross_val_accuracy: float
    cross_val_hits: int
    n_cross_val: int
    control_cross_val_accuracy: float
    test: Estimate
    test_hits: int
    chance: float
    p_value: float
    n_sites: int

    def to_numbers(self) -> dict:
        """Plain JSON-able numbers."""
        return dict(
            layer=self.layer, position=self.position, position_label=self.position_label, depth=self.depth,
            selectivity=self.selectivity, cross_val_accuracy=self.cross_val_accuracy,
            cross_val_hits=self.cross_val_hits, n_cross_val=self.n_cross_val,
            control_cross_val_accuracy=self.control_cross_val_accuracy, test_accuracy=self.test.mean,
            test_ci_low=self.test.low, test_ci_high=self.test.high, test_hits=self.test_hits, n_test=self.test.n,
            chance=self.chance, p_value=self.p_value, n_sites=self.n_sites, chosen_on="cross_val",
            interval="clopper_pearson_95",
        )


@dataclass(frozen=True)
class ProbeResult:
    """Decodability of the answer entity at each (depth, prompt position), per example, with controls.

    Depth ``d`` reads ``depth_labels[d]`` (for ``hook="resid"``: ``"L0 resid_pre"`` ... ``"final"``, the
    residual stream before each layer and after the last). An example is decoded correctly when its answer
    scores strictly above each of the other ``M - 1`` candidates (:attr:`candidates`); a tie is a miss.

    Attributes:
        train_correct: the probe fitted on all training statements, right on each of them.
        cross_val_correct: each training statement decoded by the probe of the cross-validation fold
            that left it (and its answer class) out; empty when ``cv_folds=0``.
        test_scores: every candidate's score for every test statement.
        test_answers: each test statement's answer, an index into :attr:`candidates`.
        control_train_correct: control-task probes (the classes relabelled by a random but consistent
            permutation ``pi``, one per shuffle), right on their relabelled training labels.
        control_test_correct: control-task probes, right on the test statements' true answers.
        control_cross_val_correct: the control task cross-validated like the task (fold probes fitted on the
            relabelled training folds, right on the left-out fold's relabelled answers): the control of
            :attr:`selectivity`; empty when ``cv_folds=0``.
        depth_labels: what each depth reads.
        positions: the prompt positions probed (token indices, ``<bos>`` = 0).
        position_labels: a name per probed position (``"<bos>"``, ``"subject"``, ``"<-"``, ...).
        candidates: the ``M`` answer entities decoded among.
        train_statements: the probe's training statements, in row order.
        test_statements: the test statements, in row order.
        direction: ``"reverse"`` (answer ``A`` at ``<bos> B <-``) or ``"forward"``.
        target: the per-entity target vectors (``"unembed"``, ``"embed"`` or ``"random_code"``).
        hook: the activations probed (see :data:`HOOKS`).
        weight_decay: the probes' L2 penalty.
    """

    train_correct: Bool[Tensor, "depth pos n_train"]
    cross_val_correct: Bool[Tensor, "depth pos n_cv"]
    test_scores: Float[Tensor, "depth pos n_test m"]
    test_answers: Int[Tensor, " n_test"]
    control_train_correct: Bool[Tensor, "shuffle depth pos n_train"]
    control_test_correct: Bool[Tensor, "shuffle depth pos n_test"]
    control_cross_val_correct: Bool[Tensor, "shuffle depth pos n_cv"]
    depth_labels: tuple[str, ...]
    positions: tuple[int, ...]
    position_labels: tuple[str, ...]
    candidates: tuple[str, ...]
    train_statements: tuple[Statement, ...]
    test_statements: tuple[Statement, ...]
    direction: str
    target: str
    hook: str
    weight_decay: float

    @property
    def chance(self) -> float:
        """Top-1 accuracy of a uniform guess among the candidates, ``1 / M``."""
        return 1.0 / len(self.candidates)

    @property
    def test_predictions(self) -> Int[Tensor, "depth pos n_test"]:
        return self.test_scores.argmax(-1)

    @property
    def test_correct(self) -> Bool[Tensor, "depth pos n_test"]:
        return top1_correct(self.test_scores, self.test_answers)

    @property
    def test_ranks(self) -> Float[Tensor, "depth pos n_test"]:
        """The true answer's rank among all ``M`` candidates: 1 + the candidates scored above it + half the
        others tied with it (a random tie-break's expectation). Uniform guessing: mean ``(M + 1) / 2``."""
        return answer_ranks(self.test_scores, self.test_answers)

    @property
    def test_ranks_within_test(self) -> Float[Tensor, "depth pos n_test"]:
        """The true answer's rank among the test statements' answers only (uniform: mean ``(k + 1) / 2`` for
        ``k`` distinct test answers). Free of the bias of a probe toward the classes it was fitted on (the
        "generalized zero-shot" bias, Chao et al. 2016): every candidate here is new to the probe."""
        test_classes, answers = torch.unique(self.test_answers, return_inverse=True)
        return answer_ranks(self.test_scores[..., test_classes], answers)

    @property
    def train_accuracy(self) -> Float[Tensor, "depth pos"]:
        return self.train_correct.float().mean(-1)

    @property
    def cross_val_accuracy(self) -> Float[Tensor, "depth pos"]:
        """Accuracy on seen pairs whose answer class the probe never saw: the positive control (NaN without
        cross-validation)."""
        return self.cross_val_correct.float().mean(-1)

    @property
    def test_accuracy(self) -> Float[Tensor, "depth pos"]:
        return self.test_correct.float().mean(-1)

    @property
    def control_train_accuracy(self) -> Float[Tensor, "depth pos"]:
        return self.control_train_correct.float().mean((0, -1))

    @property
    def control_test_accuracy(self) -> Float[Tensor, "depth pos"]:
        return self.control_test_correct.float().mean((0, -1))

    @property
    def control_cross_val_accuracy(self) -> Float[Tensor, "depth pos"]:
        """The control task's cross-validated accuracy (NaN without cross-validation)."""
        return self.control_cross_val_correct.float().mean((0, -1))

    @property
    def selectivity(self) -> Float[Tensor, "depth pos"]:
        """Hewitt & Liang's selectivity per site, on cross-validation over the training (seen) statements: the
        task's accuracy minus the control task's (same probe, same folds, classes consistently relabelled)."""
        return self.cross_val_accuracy - self.control_cross_val_accuracy

    @property
    def selected_site(self) -> SelectedSite:
        """The site of the headline, chosen on cross-validation over the training statements only (never on the
        test split): the highest :attr:`selectivity`, ties to the higher cross-validated accuracy, then the
        earlier depth and position; with its test accuracy on the held-out statements (exact Clopper-Pearson
        interval) against chance."""
        if self.cross_val_correct.shape[-1] == 0:
            raise ValueError("selected_site needs cross-validation (cv_folds >= 2): sites are chosen on it")
        selectivity, cv = self.selectivity.cpu(), self.cross_val_accuracy.cpu()
        n_pos = selectivity.shape[1]
        order = sorted(range(selectivity.numel()),
                       key=lambda i: (-selectivity.flatten()[i].item(), -cv.flatten()[i].item(), i))
        d, p = divmod(order[0], n_pos)
        return self._site(d, p)

    def _site(self, d: int, p: int) -> SelectedSite:
        from scipy.stats import binom

        hits, n = int(self.test_correct[d, p].sum().item()), len(self.test_statements)
        return SelectedSite(
            depth=d, position=self.positions[p], layer=self.depth_labels[d], position_label=self.position_labels[p],
            selectivity=float(self.selectivity[d, p]), cross_val_accuracy=float(self.cross_val_accuracy[d, p]),
            cross_val_hits=int(self.cross_val_correct[d, p].sum()), n_cross_val=self.cross_val_correct.shape[-1],
            control_cross_val_accuracy=float(self.control_cross_val_accuracy[d, p]),
            test=clopper_pearson(hits, n), test_hits=hits, chance=self.chance,
            p_value=float(binom.sf(hits - 1, n, self.chance)), n_sites=int(self.selectivity.numel()),
        )

    def selectivity_frame(self):
        """One row per site (depth, position): the cross-validated task and control-task accuracy, the
        selectivity, the test accuracy with its exact Clopper-Pearson interval, chance, and ``selected`` (the
        site :attr:`selected_site` picks, on cross-validation)."""
        import pandas as pd

        chosen = self.selected_site
        rows = []
        for d in range(len(self.depth_labels)):
            for p in range(len(self.positions)):
                site = self._site(d, p)
                rows.append(dict(
                    depth=d, layer=site.layer, position=site.position, position_label=site.position_label,
                    cross_val_accuracy=site.cross_val_accuracy,
                    control_cross_val_accuracy=site.control_cross_val_accuracy,
                    selectivity=site.selectivity, test_accuracy=site.test.mean, test_ci_low=site.test.low,
                    test_ci_high=site.test.high, n_test=site.test.n, chance=self.chance, p_value=site.p_value,
                    selected=(d, site.position) == (chosen.depth, chosen.position),
                ))
        return pd.DataFrame(rows)

    def _sets(self) -> dict[str, tuple[Tensor, tuple[Statement, ...]]]:
        """Per-example correctness ``[depth, pos, rows]`` of each reported set, with the rows' statements."""
        shuffles = self.control_train_correct.shape[0]
        sets = {
            "train": (self.train_correct, self.train_statements),
            "cross_val": (self.cross_val_correct, self.train_statements if self.cross_val_correct.shape[-1] else ()),
            "test": (self.test_correct, self.test_statements),
            # Shuffles stacked as extra rows: the interval is over examples x shuffles.
            "control_train": (torch.cat(tuple(self.control_train_correct), -1), self.train_statements * shuffles),
            "control_test": (torch.cat(tuple(self.control_test_correct), -1), self.test_statements * shuffles),
        }
        return sets

    def to_frame(self, per_example: bool = False):
        """Accuracy per (set, split, depth, position) with 95 % bootstrap intervals over examples.

        ``set`` is one of ``train``, ``cross_val``, ``test``, ``control_train``, ``control_test``; ``split``
        the statements' split. With ``per_example=True``: one row per (set, depth, position, example) with
        ``correct`` (control rows repeat per shuffle).
        """
        import pandas as pd

        rows = []
        for name, (correct, statements) in self._sets().items():
            if correct.shape[-1] == 0:
                continue
            correct = correct.cpu()
            split_rows: dict[str, list[int]] = {}
            for i, s in enumerate(statements):
                split_rows.setdefault(s.split, []).append(i)
            for d, depth in enumerate(self.depth_labels):
                for p, (pos, pos_label) in enumerate(zip(self.positions, self.position_labels)):
                    common = dict(set=name, depth=d, layer=depth, position=pos, position_label=pos_label)
                    if per_example:
                        rows += [
                            dict(common, split=s.split, example=i, subject=s.subject, answer=s.object,
                                 correct=bool(correct[d, p, i]))
                            for i, s in enumerate(statements)
                        ]
                        continue
                    for split, index in split_rows.items():
                        estimate = bootstrap_ci(correct[d, p, index].double())
                        rows.append(dict(common, split=split, accuracy=estimate.mean, ci_low=estimate.low,
                                         ci_high=estimate.high, n=estimate.n, chance=self.chance))
        return pd.DataFrame(rows)

    def plot(self):
        """Plotly lines over depth, one panel per prompt position: test, cross-validated, training and
        shuffled-control accuracy with 95 % bootstrap intervals over examples, and chance."""
        from plotly.subplots import make_subplots

        labels = [f"pos {p}: {label}" for p, label in zip(self.positions, self.position_labels)]
        fig = make_subplots(rows=1, cols=len(self.positions), subplot_titles=labels, shared_yaxes=True)
        colors = dict(train="#1f77b4", cross_val="#2ca02c", test="#d62728", control_train="#9467bd",
                      control_test="#7f7f7f")
        for name, (correct, _) in self._sets().items():
            if correct.shape[-1] == 0:
                continue
            correct = correct.cpu().double()
            for p in range(len(self.positions)):
                estimates = [bootstrap_ci(correct[d, p]) for d in range(len(self.depth_labels))]
                fig.add_scatter(
                    x=list(self.depth_labels), y=[e.mean for e in estimates], mode="lines+markers", name=name,
                    legendgroup=name, showlegend=p == 0, line=dict(color=colors[name]),
                    error_y=error_bars(estimates),
                    row=1, col=p + 1,
                )
        for p in range(len(self.positions)):
            fig.add_hline(y=self.chance, line_dash="dot", line_color="black", row=1, col=p + 1)
        fig.update_yaxes(range=[0, 1.05], title_text="top-1 accuracy", row=1, col=1)
        answer = {"reverse": "A", "forward": "B", "composed": "z"}[self.direction]
        fig.update_layout(
            title=f"Linear probe for the {self.direction} answer {answer} ({self.target} targets, {self.hook}); "
                  f"{len(self.train_statements)} train, {len(self.test_statements)} test, "
                  f"chance 1/{len(self.candidates)} (dotted)",
        )
        return fig

    def summary(self) -> str:
        """A table per depth and position: train, cross-validated (cv) and test accuracy (per test split, with
        its 95 % bootstrap interval), the test answers' mean rank among all candidates and among the test
        answers, and the shuffled-label control's train and test accuracy."""
        test_rows: dict[str, list[int]] = {}
        for i, s in enumerate(self.test_statements):
            test_rows.setdefault(s.split, []).append(i)
        m, k = len(self.candidates), int(self.test_answers.unique().numel())
        lines = [
            f"{self.direction} answer-identity probe ({self.target} targets, {self.hook}, weight decay "
            f"{self.weight_decay:g}): {len(self.train_statements)} train / {len(self.test_statements)} test "
            f"statements, {m} candidates, chance {self.chance:.3f}",
            f"  {'depth':<14}{'position':<12}{'train':>6}{'cv':>6}  "
            + "".join(f"{split + ' [95% CI]':<27}" for split in test_rows)
            + f"{'rank/' + str(m):>9}{'rank/' + str(k):>9}{'ctl train':>10}{'ctl test':>9}",
        ]
        has_cv = self.cross_val_correct.shape[-1] > 0
        correct = self.test_correct.cpu().double()
        ranks, ranks_within = self.test_ranks.mean(-1), self.test_ranks_within_test.mean(-1)
        for d, depth in enumerate(self.depth_labels):
            for p, label in enumerate(self.position_labels):
                tests = [bootstrap_ci(correct[d, p, rows]) for rows in test_rows.values()]
                cv = f"{self.cross_val_accuracy[d, p].item():6.2f}" if has_cv else f"{'-':>6}"
                lines.append(
                    f"  {depth:<14}{label:<12}{self.train_accuracy[d, p].item():6.2f}{cv}  "
                    + "".join(f"{f'{t.mean:.2f} [{t.low:.2f}, {t.high:.2f}] (n={t.n})':<27}" for t in tests)
                    + f"{ranks[d, p].item():9.1f}{ranks_within[d, p].item():9.1f}"
                    f"{self.control_train_accuracy[d, p].item():10.2f}{self.control_test_accuracy[d, p].item():9.2f}"
                )
        lines.append(f"  uniform guessing: mean rank {(m + 1) / 2:.1f} of {m}, {(k + 1) / 2:.1f} of {k}")
        return "\n".join(lines)


# == the analysis =================================================================================
def probe_answer_identity(
    model_or_run,
    facts: FactSet | None = None,
    *,
    direction: str = "reverse",
    train_splits: Sequence[str] | None = None,
    test_splits: Sequence[str] | None = None,
    hook: str = "sites",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    target: str = "embed",
    tokenizer=None,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    cv_folds: int = 5,
    n_shuffles: int = 1,
    max_iter: int = 500,
    seed: int = 0,
) -> ProbeResult:
    """Linear probes for the answer entity's identity at every depth and prompt position.

    For ``direction="reverse"`` the prompts are ``<bos> B_i <-`` and the answer is ``A_i``: probes are
    fitted on ``train_splits`` (default ``reverse_seen``, pairs trained both ways) and tested on
    ``test_splits`` (default ``reverse_held_out``). ``"forward"`` mirrors it (``<bos> A_i ->`` decoding
    ``B_i``; default ``forward_seen`` -> ``forward_held_out``; ``forward_only`` is another useful test).
    ``"composed"`` probes the chain data's ``<bos> x_i ~>`` for ``z_i`` (``chain_composed_seen`` ->
    ``chain_composed_held_out``).
    The activations come from one ``run_with_cache`` of the prompts (no gradient). The probe, its targets
    and its controls are described in the module docstring (Alain & Bengio 2016; Hewitt & Liang 2019).

    Args:
        model_or_run: a :class:`~revinterp.models.LoadedRun` (``probe_answer_identity(run)``), or a
            ``TransformerBridge`` in eval mode with its ``facts``; everything runs on the model's device.
        facts: the fact set the model was trained on; only with a model, not with a run.
        direction: ``"reverse"``, ``"forward"`` or ``"composed"``; every statement of the splits must have it.
        train_splits: splits whose statements the probe is fitted on.
        test_splits: splits it is tested on; disjoint from ``train_splits``.
        hook: which activations (:data:`HOOKS`); ``"resid"`` reads the residual stream before each layer
            and after the last one.
        layers: depth indices to probe (negative ones count from the end); default all.
        positions: prompt positions to probe (``<bos>`` = 0; negative ones count from the end); default all.
        target: per-entity target vectors: ``"unembed"``, ``"embed"`` or ``"random_code"``.
        tokenizer: default the run's, or ``model.tokenizer``.
        weight_decay: L2 penalty of every probe (:func:`~revinterp.analysis.probing.fit_identity_probe`).
        cv_folds: folds of the cross-validation over the training statements (0: none).
        n_shuffles: shuffled-label control probes per site (at least 1).
        max_iter: L-BFGS iterations per probe.
        seed: fixes the folds, the label shuffles and the random codes.

    Returns:
        A :class:`ProbeResult`.

    Raises:
        ValueError: the model is in train mode; an unknown direction, hook, target or split; a split with
            fewer than 2 statements or of the other direction; overlapping train and test splits;
            prompts of different lengths; a layer or position out of range.

    Example:
        >>> from revinterp.models import load_run                                          # doctest: +SKIP
        >>> run = load_run("runs/seed0")                                                   # doctest: +SKIP
        >>> result = probe_answer_identity(run)                                            # doctest: +SKIP
        >>> print(result.summary())                                                        # doctest: +SKIP
    """
    operation = "probe_answer_identity"
    model, facts, tokenizer = unpack_run(model_or_run, facts, tokenizer)
    if any(module.training for module in model.modules()):
        raise ValueError(f"{operation} needs the model in eval mode; it is in train mode (call model.eval() first)")
    if direction not in PROBE_DIRECTIONS:
        raise ValueError(f"direction={direction!r}: expected one of {PROBE_DIRECTIONS}")
    if target not in TARGETS:
        raise ValueError(f"target={target!r}: expected one of {TARGETS}")
    if hook not in HOOKS:
        raise ValueError(f"hook={hook!r}: expected one of {HOOKS}")
    if cv_folds < 0 or cv_folds == 1:
        raise ValueError(f"cv_folds={cv_folds}: expected 0 (no cross-validation) or at least 2 folds")
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles={n_shuffles}: expected at least 1 shuffled-label control")
    if not weight_decay > 0:
        raise ValueError(f"weight_decay={weight_decay}: expected a positive L2 penalty (it makes the fit unique)")
    default_train, default_test = DEFAULT_SPLITS[direction]
    train_splits = tuple(train_splits) if train_splits is not None else default_train
    test_splits = tuple(test_splits) if test_splits is not None else default_test
    overlap = sorted(set(train_splits) & set(test_splits))
    if overlap:
        raise ValueError(
            f"splits {overlap} are both train and test splits; expected disjoint ones (cross-validation over the "
            "training statements is built in: cv_folds)"
        )
    train_statements = _statements(facts, train_splits, direction, "train_splits")
    test_statements = _statements(facts, test_splits, direction, "test_splits")
    if cv_folds > len(train_statements):
        raise ValueError(f"cv_folds={cv_folds}: more folds than the {len(train_statements)} training statements")

    statements = train_statements + test_statements
    encoded = encode_statements(facts, statements, tokenizer)
    lengths = sorted(set(encoded.prompt_lengths.tolist()))
    if len(lengths) != 1:
        raise ValueError(
            f"prompts of the chosen splits have lengths {lengths}; expected one length so that positions line up "
            "(probe one relation or template at a time)"
        )
    n_pos = lengths[0]
    position_index = _select(positions, n_pos, "positions", "prompt positions")
    device = next(model.parameters()).device
    tokens = encoded.tokens[:, :n_pos].to(device)

    hook_names, depth_labels = _hook_names(model, hook)
    depth_index = _select(layers, len(hook_names), "layers", f"depths of hook={hook!r} ({list(depth_labels)})")
    names = [hook_names[d] for d in depth_index]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
        activations = torch.stack([cache[name][:, position_index] for name in names]).detach()  # [depth, n, pos, d]
        del cache

    candidates = sorted({c for s in statements for c in facts.candidates(s.relation)})
    index_of = {c: i for i, c in enumerate(candidates)}
    labels = torch.tensor([index_of[s.object] for s in statements], device=device)
    targets = _target_vectors(model, candidates, target, tokenizer, seed).to(device)

    n_train = len(train_statements)
    train_labels, test_labels = labels[:n_train], labels[n_train:]
    gen = torch.Generator().manual_seed(seed)
    folds = torch.randperm(n_train, generator=gen).chunk(cv_folds) if cv_folds else ()
    # The control task (Hewitt & Liang 2019): a random but consistent relabelling of the classes, pi over all M
    # candidates, so that every statement with answer a is labelled pi(a) in training, in every fold and on test.
    relabellings = [torch.randperm(len(candidates), generator=gen).to(device) for _ in range(n_shuffles)]

    n_depth, n_probed = len(names), len(position_index)
    train_correct = torch.zeros(n_depth, n_probed, n_train, dtype=torch.bool, device=device)
    cv_correct = torch.zeros(n_depth, n_probed, n_train if cv_folds else 0, dtype=torch.bool, device=device)
    test_scores = torch.zeros(n_depth, n_probed, len(test_statements), len(candidates), device=device)
    control_train = torch.zeros(n_shuffles, n_depth, n_probed, n_train, dtype=torch.bool, device=device)
    control_test = torch.zeros(n_shuffles, n_depth, n_probed, len(test_statements), dtype=torch.bool, device=device)
    control_cv = torch.zeros(n_shuffles, n_depth, n_probed, n_train if cv_folds else 0, dtype=torch.bool,
                             device=device)
    fit = lambda x, y, init=None: fit_identity_probe(x, y, targets, weight_decay=weight_decay, max_iter=max_iter,
                                                     init=init)
    for d in range(n_depth):
        for p in range(n_probed):
            x = activations[d, :, p]
            x_train, x_test = x[:n_train], x[n_train:]
            probe = fit(x_train, train_labels)
            train_correct[d, p] = top1_correct(probe.scores(x_train, targets), train_labels)
            test_scores[d, p] = probe.scores(x_test, targets)
            for fold in folds:
                fold = fold.to(device)
                keep = torch.ones(n_train, dtype=torch.bool, device=device)
                keep[fold] = False
                fold_probe = fit(x_train[keep], train_labels[keep], probe.weight)  # a warm start: same optimum
                cv_correct[d, p, fold] = top1_correct(fold_probe.scores(x_train[fold], targets), train_labels[fold])
            for s, relabel in enumerate(relabellings):
                shuffled = relabel[train_labels]
                control = fit(x_train, shuffled)
                control_train[s, d, p] = top1_correct(control.scores(x_train, targets), shuffled)
                control_test[s, d, p] = top1_correct(control.scores(x_test, targets), test_labels)
                for fold in folds:
                    fold = fold.to(device)
                    keep = torch.ones(n_train, dtype=torch.bool, device=device)
                    keep[fold] = False
                    fold_control = fit(x_train[keep], shuffled[keep], control.weight)
                    control_cv[s, d, p, fold] = top1_correct(fold_control.scores(x_train[fold], targets),
                                                             shuffled[fold])

    return ProbeResult(
        train_correct=train_correct, cross_val_correct=cv_correct, test_scores=test_scores,
        test_answers=test_labels, control_train_correct=control_train, control_test_correct=control_test,
        control_cross_val_correct=control_cv,
        depth_labels=tuple(depth_labels[d] for d in depth_index), positions=tuple(position_index),
        position_labels=_position_labels(facts, statements, n_pos, position_index),
        candidates=tuple(candidates), train_statements=train_statements, test_statements=test_statements,
        direction=direction, target=target, hook=hook, weight_decay=weight_decay,
    )


# == helpers ======================================================================================
def _statements(facts: FactSet, splits: tuple[str, ...], direction: str, argument: str) -> tuple[Statement, ...]:
    if not splits:
        raise ValueError(f"{argument} is empty; expected at least one split name")
    statements: list[Statement] = []
    for name in splits:
        try:
            split = facts.split(name)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
        if len(split) < 2:
            raise ValueError(
                f"{argument}: split {name!r} has {len(split)} statement(s); expected at least 2 to probe "
                f"(non-empty splits: {facts.split_names})"
            )
        wrong = [s for s in split if s.direction != direction]
        if wrong:
            raise ValueError(
                f"{argument}: split {name!r} holds {wrong[0].direction} statements (e.g. {facts.text(wrong[0])!r}); "
                f"expected {direction} statements for direction={direction!r}"
            )
        statements += split
    return tuple(statements)


def _select(chosen: Sequence[int] | None, size: int, argument: str, what: str) -> list[int]:
    if chosen is None:
        return list(range(size))
    chosen = list(chosen)
    bad = [i for i in chosen if not -size <= i < size]
    if bad or not chosen:
        raise ValueError(f"{argument}={chosen}: expected a non-empty list of indices into the {size} {what}")
    return sorted({i % size for i in chosen})


def _hook_names(model, hook: str) -> tuple[list[str], list[str]]:
    n_layers = model.cfg.n_layers
    if hook == "resid":
        names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
        names.append(f"blocks.{n_layers - 1}.hook_resid_post")
        labels = [f"L{layer} resid_pre" for layer in range(n_layers)] + ["final"]
    elif hook == "sites":
        kinds = ("resid_pre", "attn_out") if getattr(model.cfg, "attn_only", False) else (
            "resid_pre", "attn_out", "mlp_out")
        names = [f"blocks.{layer}.hook_{kind}" for layer in range(n_layers) for kind in kinds]
        labels = [f"L{layer} {kind}" for layer in range(n_layers) for kind in kinds]
    else:
        names = [f"blocks.{layer}.hook_{hook}" for layer in range(n_layers)]
        labels = [f"L{layer} {hook}" for layer in range(n_layers)]
    missing = [name for name in names if name not in model.hook_dict]
    if missing:
        raise ValueError(
            f"hook={hook!r}: this model has no {missing[0]} (attention-only models have no resid_mid or mlp_out); "
            f"expected a hook the model has, e.g. 'resid'"
        )
    return names, labels


def _target_vectors(model, candidates: list[str], target: str, tokenizer, seed: int) -> Float[Tensor, "m d_target"]:
    """One vector per candidate, centred over the candidates and scaled to unit norm."""
    if target == "random_code":
        gen = torch.Generator().manual_seed(seed + 1_000_003)
        vectors = torch.randn(len(candidates), model.cfg.d_model, generator=gen)
    else:
        token_ids = [encode_words(tokenizer, c.split()) for c in candidates]
        widths = sorted({len(ids) for ids in token_ids})
        if len(widths) != 1:
            raise ValueError(
                f"candidate entities have {widths} tokens; target={target!r} needs equally long entities "
                "(use target='random_code')"
            )
        with torch.no_grad():
            table = model.W_U.T if target == "unembed" else model.W_E  # [vocab, d_model]
            ids = torch.tensor(token_ids, device=table.device)
            vectors = table[ids].flatten(1).detach().float().cpu()
    return normalize_targets(vectors)


def _position_labels(
    facts: FactSet, statements: tuple[Statement, ...], n_pos: int, chosen: list[int]
) -> tuple[str, ...]:
    """``"<bos>"``, the word every prompt has at a position (``"<-"``), ``"subject"`` / ``"subject[k]"``
    where every prompt has its subject, else ``"pos{p}"``."""
    per_position: list[set[str]] = [set() for _ in range(n_pos)]
    for s in statements:
        words = ["<bos>", *facts.prompt_words(s)]
        subject = s.subject.split()
        start = next((i for i in range(1, n_pos) if words[i:i + len(subject)] == subject), None)
        for p, word in enumerate(words):
            role = None
            if start is not None and start <= p < start + len(subject):
                role = "subject" if len(subject) == 1 else f"subject[{p - start}]"
            per_position[p].add(role or f"word:{word}")
    labels = []
    for p in chosen:
        kinds = per_position[p]
        if len(kinds) == 1:
            (kind,) = kinds
            labels.append(kind.removeprefix("word:"))
        else:
            labels.append(f"pos{p}")
    return tuple(labels)
