"""The running buffers against brute force: top-k with many exact ties, contexts that follow their
entries, exact merges, histograms."""

import pytest
import torch

from scope.mining.buffers import HISTOGRAM_EDGES, ActivityStats, RunningTopK, merge_stats, merge_top


def _batches(seed, n_batches=8, batch=5, features=9):
    """Small integer maxima (so that ties are everywhere), -inf where silent, global example ids."""
    g = torch.Generator().manual_seed(seed)
    for b in range(n_batches):
        values = torch.randint(0, 4, (batch, features), generator=g).float()
        yield values.masked_fill(values <= 0, float("-inf")), torch.arange(b * batch, (b + 1) * batch)


def _feed(top, batches):
    for values, ids in batches:
        rank, feature, row = top.update(values, ids)
        # A context that names its example and feature, so that a context left behind shows.
        context = ids[row][:, None] * 100 + feature[:, None] + torch.zeros(1, 3, dtype=torch.long)
        top.fill(rank, feature, ids[row] * 10, context.int(), values[row, feature][:, None].expand(-1, 3))


def _brute_force(batches, k):
    values = torch.cat([v for v, _ in batches])
    ids = torch.cat([i for _, i in batches])
    best = {}
    for f in range(values.shape[1]):
        entries = [(float(values[e, f]), int(ids[e])) for e in range(len(ids)) if values[e, f] > float("-inf")]
        best[f] = sorted(entries, key=lambda entry: -entry[0])[:k]  # stable: earlier examples first on ties
    return best


def _entries(state):
    out = {}
    for f in range(state["values"].shape[1]):
        ranks = [r for r in range(state["k"]) if state["values"][r, f] > float("-inf")]
        out[f] = [(float(state["values"][r, f]), int(state["text_id"][r, f])) for r in ranks]
        for r in ranks:  # the entry's own position and context, wherever its storage sits
            example = int(state["text_id"][r, f])
            assert int(state["position"][r, f]) == example * 10
            assert state["tokens"][r, f].tolist() == [example * 100 + f] * 3
            assert state["acts"][r, f].tolist() == [float(state["values"][r, f])] * 3
    return out


def test_running_top_k_equals_brute_force_with_ties():
    for seed in range(20):
        batches = list(_batches(seed))
        top = RunningTopK(9, 4, context=1)
        _feed(top, batches)
        assert _entries(top.state()) == _brute_force(batches, 4)


def test_state_round_trip_and_merge_are_exact():
    batches = list(_batches(7, n_batches=10))
    whole = RunningTopK(9, 3, context=1)
    _feed(whole, batches)
    first, second = RunningTopK(9, 3, context=1), RunningTopK(9, 3, context=1)
    _feed(first, batches[:4])
    resumed = RunningTopK.from_state(first.state())  # what a checkpoint gives back
    _feed(resumed, batches[4:6])
    _feed(second, batches[6:])
    merged = merge_top([resumed, second]).state()
    for name, value in whole.state().items():
        assert torch.equal(merged[name], value) if isinstance(value, torch.Tensor) else merged[name] == value, name


def _count(stats, rows):
    """Feed ``rows`` [tokens, features] to ``stats`` as mining does: the fired entries, listed."""
    row, feature = (rows > 0).nonzero(as_tuple=True)
    stats.add(feature, rows[row, feature])
    stats.n_tokens += len(rows)


def test_activity_stats_equal_a_direct_histogram():
    g = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(300, 11, generator=g) * 50).pow(2) * (torch.rand(300, 11, generator=g) < 0.3)
    stats = ActivityStats(11)
    for rows in acts.split(70):
        _count(stats, rows)
    bins = torch.bucketize(acts, HISTOGRAM_EDGES[1:-1])
    expected = torch.stack([torch.bincount(bins[:, f][acts[:, f] > 0], minlength=56) for f in range(11)])
    assert torch.equal(stats.histogram, expected)
    assert torch.equal(stats.active, (acts > 0).sum(0)) and stats.n_tokens == 300
    halves = [ActivityStats(11), ActivityStats(11)]
    _count(halves[0], acts[:100])
    _count(halves[1], acts[100:])
    merged = merge_stats(halves)
    assert torch.equal(merged.histogram, stats.histogram) and merged.n_tokens == stats.n_tokens


@pytest.mark.parametrize("thresholds", [False, True], ids=["activations", "jumprelu-scores"])
def test_fired_entries_give_each_windows_maximum_and_its_first_position(thresholds):
    """The sparse pass (scope.mining.run.Fired) against dense reductions written here, with ties,
    negative values (not firing) and context-only leading tokens that must not be scored; from
    activations, and from scores with per-feature thresholds (a JumpReLU's pre-activations)."""
    from scope.mining.run import Fired
    from scope.mining.scores import Scores

    g = torch.Generator().manual_seed(0)
    score = torch.randint(-2, 4, (5, 9, 7), generator=g).float()  # small integers: many exact ties
    score[0, 2, 3] = -1.5  # negative: does not fire
    first_scored = [1, 3, 1, 9, 2]  # row 3 is all context
    if thresholds:
        threshold = torch.tensor([0.0, 0.5, 1.0, 1.0, 2.0, 2.5, 3.0])  # 3.0: feature 6 never fires
        scores = Scores(score, threshold)
        acts = torch.where(score > threshold, score, 0.0)
    else:
        score[score < 1] = 0
        scores, acts = Scores(score, None), score

    fired = Fired.of(scores, first_scored)
    best, peak = fired.maxima(5, 7)

    for row in range(5):
        scored = acts[row, first_scored[row] :].clamp_min(0)
        for feature in range(7):
            column = scored[:, feature]
            if column.numel() == 0 or column.max() <= 0:
                assert best[row, feature] == float("-inf")
                continue
            assert best[row, feature] == column.max()
            first = int(torch.nonzero(column == column.max())[0]) + int(first_scored[row])
            assert peak[row, feature] == first
    assert len(fired.value) == int(sum((acts[r, first_scored[r] :] > 0).sum() for r in range(5)))
