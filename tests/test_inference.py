"""The inference core (trainer.inference): words, the first-sub-token rule, scheme-aware spans, long inputs in
windows, empty and unusual inputs, big batches. On the tiny BERT fine-tuned on the synthetic task."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from conftest import make_sentences
from trainer.inference import assign_words, entity_spans, load_classifier, plan_windows, split_words


@pytest.fixture(scope="module")
def classifier(tiny_finetuned):
    return load_classifier(tiny_finetuned["pytorch"])


def _words(text: str) -> list[str]:
    return [text[a:b] for a, b in split_words(text)]


def test_split_words_conll_style_with_offsets():
    text = 'Alice (Bob) lives in Paris. Wow!!! "Hi" the U.S. e.g. 東京に 😀 café'
    assert _words(text) == ["Alice", "(", "Bob", ")", "lives", "in", "Paris", ".", "Wow", "!!!", '"', "Hi", '"',
                            "the", "U.S.", "e.g.", "東", "京", "に", "😀", "café"]
    assert split_words("  a  b ") == [(2, 3), (5, 6)]
    assert split_words("") == [] and split_words(" \t\n ") == []


@pytest.mark.parametrize("labels,spans", [
    (["B-PER", "I-PER", "O", "B-LOC"], [(0, 2, "PER"), (3, 4, "LOC")]),  # IOB2
    (["I-PER", "I-PER", "B-PER", "O", "I-LOC"], [(0, 2, "PER"), (2, 3, "PER"), (4, 5, "LOC")]),  # IOB1
    (["B-PER", "E-PER", "S-PER", "S-LOC", "B-ORG", "I-ORG", "E-ORG"],
     [(0, 2, "PER"), (2, 3, "PER"), (3, 4, "LOC"), (4, 7, "ORG")]),  # BIOES
    (["B-PER", "L-PER", "U-PER", "O"], [(0, 2, "PER"), (2, 3, "PER")]),  # BILOU
    (["PER", "PER", "O", "LOC", "ORG"], [(0, 2, "PER"), (3, 4, "LOC"), (4, 5, "ORG")]),  # plain tags
    (["B-PER", "I-LOC", "I-LOC"], [(0, 1, "PER"), (1, 3, "LOC")]),  # a type change starts an entity
    (["O", "O"], []),
    ([], []),
])
def test_entity_spans_follow_the_tag_scheme(labels, spans):
    assert entity_spans(labels) == spans


def test_windows_respect_capacity_cover_every_word_and_give_each_word_context():
    rng = random.Random(0)
    for _ in range(200):
        counts = [rng.choice([0, 1, 1, 1, 2, 3, 7]) for _ in range(rng.randint(1, 300))]
        capacity, overlap = rng.randint(8, 40), rng.randint(0, 10)
        spans = plan_windows(counts, capacity, min(overlap, capacity // 2))
        assert spans[0][0] == 0 and spans[-1][1] == len(counts)
        for (a, b), (c, d) in zip(spans, spans[1:]):
            assert a < c <= b  # progress, no gap
            assert sum(counts[c:b]) <= overlap
        for a, b in spans:
            assert sum(counts[a:b]) <= capacity or b - a == 1
        owner = assign_words(counts, spans)
        assert all(spans[owner[w]][0] <= w < spans[owner[w]][1] for w in range(len(counts)))


def test_label_of_a_word_is_its_first_sub_token_prediction(classifier, tiny_finetuned):
    # "zyxwort" is out of vocabulary: several sub-tokens, of which only the first carries the word's label.
    words = ["alice", "zyxwort", "lives", "in", "zyxwort", "."]
    encoding = classifier.tokenizer(words, is_split_into_words=True, return_tensors="pt")
    assert sum(1 for w in encoding.word_ids() if w == 1) > 1
    with torch.inference_mode():
        logits = classifier.backend.model(**encoding).logits[0]
    first = {}
    for position, word in enumerate(encoding.word_ids()):
        if word is not None:
            first.setdefault(word, position)
    expected = [classifier.class_names[int(logits[first[w]].argmax())] for w in range(len(words))]
    prediction = classifier.predict([words])[0]
    assert prediction.labels == expected
    probs = torch.softmax(logits[[first[w] for w in range(len(words))]], -1).max(-1).values.tolist()
    assert prediction.scores == pytest.approx(probs, abs=1e-6)


def test_entities_with_offsets_and_scores(classifier):
    text = "yesterday alice smith met bob in paris ."
    prediction = classifier.predict([text])[0]
    assert [(e["text"], e["label"]) for e in prediction.entities] == [
        ("alice smith", "person"), ("bob", "person"), ("paris", "location")]
    for entity in prediction.entities:
        assert text[entity["start"]:entity["end"]] == entity["text"] and 0.5 < entity["score"] <= 1
    assert prediction.to_dict()["offsets"][0] == [0, 9]


def test_empty_and_whitespace_inputs_give_empty_results(classifier):
    results = classifier.predict(["", "   \t", None, [], float("nan"), "alice lives in paris ."])
    assert [r.words for r in results[:5]] == [[]] * 5
    assert [r.entities for r in results[:5]] == [[]] * 5
    assert results[5].labels == ["B-person", "O", "O", "B-location", "O"]
    assert classifier.predict([]) == []


def test_emoji_non_latin_and_unpredictable_words(classifier):
    text = "alice 😀 москва 東京 \u200b paris"
    prediction = classifier.predict([text])[0]
    assert prediction.words == ["alice", "😀", "москва", "東", "京", "\u200b", "paris"]
    assert len(prediction.labels) == len(prediction.words)
    # the tokenizer drops a lone zero-width space: no sub-token, so no prediction (label O, score None)
    assert prediction.scores[5] is None and prediction.labels[5] == "O"
    assert all(s is not None for k, s in enumerate(prediction.scores) if k != 5)
    assert prediction.labels[0] == "B-person" and prediction.labels[-1] == "B-location"


def test_a_long_text_is_windowed_and_every_word_labelled(classifier):
    # The tiny model takes 64 sub-tokens; 5,000+ words of synthetic sentences need ~100 windows.
    sentences = make_sentences(700, seed=11)
    words = [w for tokens, _ in sentences for w in tokens][:5000]
    gold = [t for _, tags in sentences for t in tags][:5000]
    assert classifier.max_length == 64 and len(words) == 5000
    prediction = classifier.predict([" ".join(words)])[0]
    assert prediction.words == words
    assert all(s is not None for s in prediction.scores)
    from trainer.metrics import entity_scores

    overall, _ = entity_scores([gold], [prediction.labels], classifier.class_names)
    assert overall["f1"] > 0.9, overall  # windows with context on both sides label as well as whole sentences


def test_a_thousand_sentences_in_one_call_match_one_by_one(classifier):
    sentences = [" ".join(tokens) for tokens, _ in make_sentences(1000, seed=5)]
    results = classifier.predict(sentences)
    assert len(results) == 1000
    assert all(r.text == s for r, s in zip(results, sentences))
    for index in random.Random(1).sample(range(1000), 25):  # batching, sorting and padding change nothing
        alone = classifier.predict([sentences[index]])[0]
        assert alone.labels == results[index].labels
        assert np.allclose(alone.scores, results[index].scores, atol=1e-5)
