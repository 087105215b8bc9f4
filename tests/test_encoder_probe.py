"""The encoder probe's held-out nouns are split by what the probe's training prompts show."""
from benchmarks.encoder_probe import colour_prompts, noun_pairs, seen_mask


def test_seen_and_unseen_nouns_are_split_by_the_training_prompts_pairs():
    train, test = colour_prompts("train"), colour_prompts("test")
    trained_pairs = set(noun_pairs(train))
    pairs, seen = noun_pairs(test), seen_mask(train, test)
    assert len(pairs) == len(seen) == 2 * len(test)
    assert all((pair in trained_pairs) == bool(s) for pair, s in zip(pairs, seen))
    assert 0 < int(seen.sum()) < len(seen)  # both groups exist: a test prompt's other noun may be a seen pair
    # every held-out prompt has at least one noun whose pair no training prompt shows
    assert all(not (seen[2 * i] and seen[2 * i + 1]) for i in range(len(test)))
