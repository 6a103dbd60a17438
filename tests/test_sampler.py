"""Samplers and multi-dataset schedules: properties (hypothesis), exact lengths, and equality with
sentence-transformers' samplers on the same seed and epoch."""

from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minisbert.data import DataError, from_columns
from minisbert.sampler import MultiDatasetSchedule, NoDuplicatesBatchSampler, ShuffledBatchSampler

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def datasets(draw, max_rows=40):
    """Small datasets over a small vocabulary, so duplicates within and across columns are common."""
    n_columns = draw(st.integers(1, 3))
    n_rows = draw(st.integers(1, max_rows))
    vocab = [f"t{i}" for i in range(draw(st.integers(1, 2 * n_rows + 2)))]
    columns = {f"c{j}": draw(st.lists(st.sampled_from(vocab), min_size=n_rows, max_size=n_rows))
               for j in range(n_columns)}
    return from_columns(columns)


def assert_no_duplicates(dataset, batch):
    seen = set()
    for row in dataset.rows(batch):
        texts = set(row)  # a text repeated inside one row is allowed (ST's rule)
        assert not texts & seen, f"duplicate text {texts & seen} in batch {batch}"
        seen |= texts


# ---------------------------------------------------------------------------------------------
# NoDuplicatesBatchSampler


@FAST
@given(datasets(), st.data(), st.booleans(), st.integers(0, 2**31), st.integers(0, 5))
def test_no_duplicates_properties(dataset, data, drop_last, seed, epoch):
    batch_size = data.draw(st.integers(1, len(dataset)))
    sampler = NoDuplicatesBatchSampler(dataset, batch_size, seed=seed, drop_last=drop_last)
    try:
        batches = sampler.batches(epoch)
    except DataError as e:  # documented: drop_last and not one full batch possible
        assert drop_last and "no full batch" in str(e)
        return
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        assert_no_duplicates(dataset, batch)
    flat = [i for batch in batches for i in batch]
    assert len(flat) == len(set(flat))  # never a row twice in one epoch
    if drop_last:
        assert all(len(batch) == batch_size for batch in batches)
    else:
        assert sorted(flat) == list(range(len(dataset)))  # every row exactly once
    assert len(batches) == sampler.num_batches(epoch)
    again = NoDuplicatesBatchSampler(dataset, batch_size, seed=seed, drop_last=drop_last)
    assert again.num_batches(epoch) == len(batches)  # count first, then batches: same answer
    assert again.batches(epoch) == batches


def naive_no_duplicates(dataset, order, batch_size, drop_last):
    """ST's greedy pass written plainly: scan the remaining rows, take non-conflicting ones."""
    remaining, batches = list(order), []
    while remaining:
        batch, texts = [], set()
        for row in list(remaining):
            row_texts = set(dataset.rows([row])[0])
            if row_texts & texts:
                continue
            batch.append(row)
            remaining.remove(row)
            texts |= row_texts
            if len(batch) == batch_size:
                break
        if len(batch) == batch_size or not drop_last:
            batches.append(batch)
    return batches


@FAST
@given(datasets(), st.data(), st.booleans(), st.integers(0, 1000), st.integers(0, 3))
def test_no_duplicates_matches_naive_greedy(dataset, data, drop_last, seed, epoch):
    batch_size = data.draw(st.integers(1, len(dataset)))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    expected = naive_no_duplicates(dataset, order, batch_size, drop_last)
    sampler = NoDuplicatesBatchSampler(dataset, batch_size, seed=seed, drop_last=drop_last)
    if not expected:
        with pytest.raises(DataError, match="no full batch"):
            sampler.batches(epoch)
    else:
        assert sampler.batches(epoch) == expected


class RowsView:
    """What ST's NoDuplicatesBatchSampler reads from a `datasets.Dataset`, without `datasets`."""

    def __init__(self, dataset):
        self.dataset, self.column_names = dataset, dataset.column_names

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return dict(zip(self.column_names, self.dataset.rows([i])[0]))


@FAST
@given(datasets(), st.data(), st.booleans(), st.integers(0, 1000), st.integers(0, 3))
def test_no_duplicates_equals_sentence_transformers(dataset, data, drop_last, seed, epoch):
    sampler_module = pytest.importorskip("sentence_transformers.base.sampler")
    batch_size = data.draw(st.integers(1, len(dataset)))
    reference = sampler_module.NoDuplicatesBatchSampler(
        RowsView(dataset), batch_size, drop_last, generator=torch.Generator(), seed=seed)
    reference.set_epoch(epoch)
    expected = list(reference)
    ours = NoDuplicatesBatchSampler(dataset, batch_size, seed=seed, drop_last=drop_last)
    if drop_last and not any(len(b) == batch_size for b in expected):
        return  # ST yields nothing; we raise (tested above)
    batches = ours.batches(epoch)
    if drop_last:  # ST may append up to two resampled passes to reach its announced length; we never do
        assert expected[:len(batches)] == batches
    else:
        assert expected == batches


def test_st_announced_length_is_wrong_ours_is_exact():
    """ST #3611/#3946: a repeated anchor makes ST announce more batches than a pass can yield.

    6 rows share anchor "a" and 6 are unique; a batch of 4 holds at most one "a" row, so at most
    two full batches exist, while ST announces floor(12 / 4) = 3 (and pads with resampled rows)."""
    anchors = ["a"] * 6 + [f"u{i}" for i in range(6)]
    dataset = from_columns({"anchor": anchors, "positive": [f"p{i}" for i in range(12)]})
    for seed in range(5):
        sampler = NoDuplicatesBatchSampler(dataset, 4, seed=seed, drop_last=True)
        batches = sampler.batches(0)
        assert len(batches) == sampler.num_batches(0) <= 2
    for batch in batches:
        assert_no_duplicates(dataset, batch)


def test_epochs_differ_and_cache_is_consistent():
    dataset = from_columns({"a": [f"a{i}" for i in range(200)], "b": [f"b{i % 50}" for i in range(200)]})
    sampler = NoDuplicatesBatchSampler(dataset, 16, seed=3)
    epochs = [sampler.batches(e) for e in range(4)]
    assert all(epochs[i] != epochs[j] for i in range(4) for j in range(i))
    assert [sampler.num_batches(e) for e in range(4)] == [len(b) for b in epochs]
    assert sampler.batches(0) == epochs[0]  # recomputed after leaving the cache: same batches
    sampler.batches(0)[0].append(-1)  # callers get copies
    assert sampler.batches(0) == epochs[0]
    assert NoDuplicatesBatchSampler(dataset, 16, seed=4).batches(0) != epochs[0]
    assert sampler.batches(0, repeat=1) != epochs[0]


def test_no_full_batch_is_an_error_naming_the_data():
    dataset = from_columns({"a": ["same"] * 5, "b": ["x", "y", "z", "w", "v"]}, source="dup.jsonl")
    assert NoDuplicatesBatchSampler(dataset, 2).num_batches(0) == 5  # one row per batch
    with pytest.raises(DataError, match="dup.jsonl.*no full batch of 2"):
        NoDuplicatesBatchSampler(dataset, 2, drop_last=True).batches(0)


@pytest.mark.parametrize("sampler_class", [NoDuplicatesBatchSampler, ShuffledBatchSampler])
def test_batch_size_errors(sampler_class):
    dataset = from_columns({"a": ["x", "y", "z"]}, source="train.csv")
    with pytest.raises(DataError, match=r"train.csv: batch_size 4 is larger than the data \(3 rows\)"):
        sampler_class(dataset, 4)
    with pytest.raises(DataError, match="at least 1"):
        sampler_class(dataset, 0)
    with pytest.raises(DataError, match="integer"):
        sampler_class(dataset, 2.0)


# ---------------------------------------------------------------------------------------------
# ShuffledBatchSampler


@FAST
@given(st.integers(1, 60), st.data(), st.booleans(), st.integers(0, 1000), st.integers(0, 3))
def test_shuffled_equals_torch_random_sampler(n, data, drop_last, seed, epoch):
    """ST's default sampler is BatchSampler(RandomSampler(dataset, generator)); seeded seed + epoch."""
    batch_size = data.draw(st.integers(1, n))
    generator = torch.Generator().manual_seed(seed + epoch)
    expected = list(torch.utils.data.BatchSampler(
        torch.utils.data.RandomSampler(range(n), generator=generator), batch_size, drop_last))
    sampler = ShuffledBatchSampler(from_columns({"a": [str(i) for i in range(n)]}), batch_size,
                                   seed=seed, drop_last=drop_last)
    assert sampler.batches(epoch) == expected
    assert sampler.num_batches(epoch) == len(expected)


# ---------------------------------------------------------------------------------------------
# MultiDatasetSchedule


def make_samplers(sizes, batch_size=5, cls=ShuffledBatchSampler):
    return [cls(from_columns({"a": [f"d{d}-{i}" for i in range(n)]}, name=f"d{d}"), batch_size, seed=10 + d)
            for d, n in enumerate(sizes)]


def test_round_robin_is_n_times_min_in_turn():
    samplers = make_samplers([10, 25, 40])  # 2, 5, 8 batches
    schedule = MultiDatasetSchedule(samplers, mode="round_robin")
    for epoch in (0, 1):
        batches = schedule.batches(epoch)
        assert len(batches) == schedule.num_batches(epoch) == 3 * 2
        assert [d for d, _ in batches] == [0, 1, 2, 0, 1, 2]
        for r in range(2):
            for d in range(3):
                assert batches[3 * r + d][1] == samplers[d].batches(epoch)[r]  # epoch-aware children


def test_proportional_uses_all_batches_once():
    samplers = make_samplers([10, 25, 40], cls=NoDuplicatesBatchSampler)
    schedule = MultiDatasetSchedule(samplers, mode="proportional", seed=5)
    for epoch in (0, 1):
        batches = schedule.batches(epoch)
        assert len(batches) == schedule.num_batches(epoch) == 2 + 5 + 8
        for d, sampler in enumerate(samplers):
            assert [b for i, b in batches if i == d] == sampler.batches(epoch)  # in the child's order
    assert schedule.batches(0) != schedule.batches(1)


@pytest.mark.parametrize("mode", ["round_robin", "proportional"])
def test_schedules_equal_sentence_transformers(mode):
    sampler_module = pytest.importorskip("sentence_transformers.base.sampler")
    sizes, epoch, seed = [12, 30, 21], 2, 7
    samplers = make_samplers(sizes, batch_size=4)
    ours = MultiDatasetSchedule(samplers, mode=mode, seed=seed).batches(epoch)
    children = [sampler_module.DefaultBatchSampler(
        torch.utils.data.RandomSampler(range(n), generator=torch.Generator().manual_seed(s.seed + epoch)),
        batch_size=4, drop_last=False) for n, s in zip(sizes, samplers)]
    cls = {"round_robin": sampler_module.RoundRobinBatchSampler,
           "proportional": sampler_module.ProportionalBatchSampler}[mode]
    concat = torch.utils.data.ConcatDataset([range(n) for n in sizes])
    reference = cls(concat, children, generator=torch.Generator(), seed=seed)
    reference.set_epoch(epoch)
    offsets = [0, 12, 42]
    expected = []
    for batch in reference:
        d = max(i for i in range(3) if batch[0] >= offsets[i])
        expected.append((d, [j - offsets[d] for j in batch]))
    assert ours == expected


def test_weighted_frequencies_follow_weights_and_reshuffle():
    samplers = make_samplers([1000, 1000, 1000], batch_size=1)
    weights = [1.0, 2.0, 5.0]
    schedule = MultiDatasetSchedule(samplers, mode="weighted", weights=weights, seed=0)
    batches = schedule.batches(0)
    total = schedule.num_batches(0)
    assert len(batches) == total == 3000
    counts = Counter(d for d, _ in batches)
    for d, w in enumerate(weights):
        p = w / sum(weights)
        assert abs(counts[d] - total * p) < 4 * (total * p * (1 - p)) ** 0.5  # 4 sigma
    # Dataset 2 (weight 5/8: ~1875 draws of 1000 batches) runs out: its second pass is a new shuffle.
    drawn = [b for d, b in batches if d == 2]
    assert drawn[:1000] == samplers[2].batches(0)
    assert drawn[1000:] == samplers[2].batches(0, repeat=1)[:len(drawn) - 1000]
    assert drawn[1000:] != drawn[:len(drawn) - 1000]
    assert sorted(i for b in drawn[:1000] for i in b) == list(range(1000))
    assert schedule.batches(0) == batches  # deterministic
    assert schedule.batches(1) != batches  # reshuffled per epoch


def test_weighted_zero_weight_is_never_drawn():
    schedule = MultiDatasetSchedule(make_samplers([10, 10]), mode="weighted", weights=[0, 1])
    assert {d for d, _ in schedule.batches(0)} == {1}
    assert schedule.num_batches(0) == 4


def test_every_batch_comes_from_one_dataset():
    sizes = [7, 13, 9]
    samplers = make_samplers(sizes, batch_size=3, cls=NoDuplicatesBatchSampler)
    for mode, weights in (("round_robin", None), ("proportional", None), ("weighted", [1, 1, 3])):
        for d, batch in MultiDatasetSchedule(samplers, mode=mode, weights=weights).batches(1):
            assert all(0 <= i < sizes[d] for i in batch)


def test_schedule_errors():
    samplers = make_samplers([10, 10])
    with pytest.raises(DataError, match="unknown schedule 'mixed'; expected one of round_robin, proportional"):
        MultiDatasetSchedule(samplers, mode="mixed")
    with pytest.raises(DataError, match="needs weights"):
        MultiDatasetSchedule(samplers, mode="weighted")
    with pytest.raises(DataError, match="got 3 weights for 2 datasets"):
        MultiDatasetSchedule(samplers, mode="weighted", weights=[1, 2, 3])
    with pytest.raises(DataError, match="weight 1 must be a finite number"):
        MultiDatasetSchedule(samplers, mode="weighted", weights=[1, float("nan")])
    with pytest.raises(DataError, match="not all be 0"):
        MultiDatasetSchedule(samplers, mode="weighted", weights=[0, 0])
    with pytest.raises(DataError, match="only used by mode='weighted'"):
        MultiDatasetSchedule(samplers, mode="round_robin", weights=[1, 1])
    with pytest.raises(DataError, match="at least one sampler"):
        MultiDatasetSchedule([])


def test_the_old_data_names_of_the_samplers_still_work_with_a_warning():
    import minisbert.data
    import minisbert.sampler

    for name in ("NoDuplicatesBatchSampler", "ShuffledBatchSampler", "MultiDatasetSchedule"):
        with pytest.warns(DeprecationWarning, match=f"minisbert.data.{name} is deprecated; import it from minisbert.sampler"):
            assert getattr(minisbert.data, name) is getattr(minisbert.sampler, name)
    with pytest.warns(DeprecationWarning, match="DATASET_SCHEDULES"):
        assert minisbert.sampler.SCHEDULES == minisbert.sampler.DATASET_SCHEDULES == ("round_robin", "proportional", "weighted")
