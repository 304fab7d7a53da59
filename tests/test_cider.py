"""CIDEr-D parity with the official coco-caption scorer (pycocoevalcap's Cider), per image, to 1e-9."""
from __future__ import annotations

import pytest
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from captioning.metrics import CiderD, cider_d, score_captions, tokenize_for_scoring
from test_bleu import load_flickr8k_test, split


def official(hypotheses: dict, references: dict) -> tuple[float, dict]:
    gts = {i: list(references[i]) for i in hypotheses}
    res = {i: [hypotheses[i]] for i in hypotheses}
    corpus, per_image = Cider().compute_score(gts, res)
    return float(corpus), dict(zip(gts, (float(s) for s in per_image)))


@pytest.fixture(scope="module")
def flickr8k_tokens(reference_data) -> dict[str, list[str]]:
    """The 1,000 Flickr8k test images' five captions, through the official PTBTokenizer (one Java call)."""
    captions = load_flickr8k_test(reference_data)
    tokenized = PTBTokenizer().tokenize({i: [{"caption": c} for c in caps] for i, caps in captions.items()})
    return {i: [s for s in tokenized[i]] for i in captions}


@pytest.mark.parametrize("k", range(5))
def test_flickr8k_human_vs_human_parity(flickr8k_tokens, k):
    """Caption #k of each image against the other four, as in the BLEU parity tests."""
    hypotheses, references = split(flickr8k_tokens, k)
    ours, ours_per_image = cider_d(hypotheses, references)
    theirs, theirs_per_image = official(hypotheses, references)
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert all(ours_per_image[i] == pytest.approx(theirs_per_image[i], abs=1e-9) for i in hypotheses)
    assert 0.3 < ours < 1.5  # humans agree with each other this much on Flickr8k


EDGE_REFERENCES = {
    1: ["a dog runs on the grass", "the brown dog is running", "a dog running outside"],
    2: ["two people walk down a street", "people walking in the city"],
    3: ["a red ball", "a ball that is red", "one red ball on the floor"],
}


@pytest.mark.parametrize("name, hypotheses", [
    ("empty hypothesis", {1: "", 2: "people walking", 3: "a red ball"}),
    ("repeated words", {1: "dog dog dog dog dog dog", 2: "people people walk walk", 3: "a a a red red ball ball"}),
    ("unseen words", {1: "zebra xylophone quantum", 2: "two people walk down a street", 3: "a"}),
    ("longer than every reference", {1: "a dog runs on the grass and a dog runs on the grass again and again",
                                     2: "two", 3: "one red ball on the floor near the big blue wall of the room"}),
    ("exact copies", {1: "a dog runs on the grass", 2: "people walking in the city", 3: "a red ball"}),
])
def test_edge_cases_match_the_official_scorer(name, hypotheses):
    ours, ours_per_image = cider_d(hypotheses, EDGE_REFERENCES)
    theirs, theirs_per_image = official(hypotheses, EDGE_REFERENCES)
    assert ours == pytest.approx(theirs, abs=1e-9), name
    assert all(ours_per_image[i] == pytest.approx(theirs_per_image[i], abs=1e-9) for i in hypotheses)


def test_a_single_image(tmp_path):
    """With one image every n-gram of the references has document frequency 1 = N: idf 0, score 0."""
    hyp, refs = {7: "a dog runs"}, {7: ["a dog runs", "a dog is running"]}
    assert cider_d(hyp, refs) == (pytest.approx(official(hyp, refs)[0], abs=1e-9), {7: pytest.approx(0.0)})


def test_consensus_is_each_caption_against_the_others():
    scorer = CiderD([refs for refs in EDGE_REFERENCES.values()])
    captions = ["a dog runs on the grass", "a dog running outside", "a red ball", "the brown dog is running"]
    consensus = scorer.consensus(captions)
    for i, c in enumerate(captions):
        assert consensus[i] == pytest.approx(scorer.image_score(c, captions[:i] + captions[i + 1:]), abs=1e-12)
    assert consensus.argmin() == 2  # the one caption that is not about a dog agrees least


def test_score_captions_reports_cider_from_raw_strings():
    raw = {1: "A dog runs on the grass.", 2: "People walking in the city!", 3: "A red ball."}
    scores = score_captions(raw, EDGE_REFERENCES)
    hypotheses, references = tokenize_for_scoring(raw, EDGE_REFERENCES)
    assert scores["cider"] == pytest.approx(official(hypotheses, references)[0], abs=1e-9)
    assert scores["cider"] > 1.0 and "bleu4" in scores
