"""The inference core (trainer.inference): words, the first-sub-token rule, spans read as the metrics read them
in the recorded tag scheme, long inputs in windows, empty and unusual inputs, big batches. On the tiny BERT
fine-tuned on the synthetic task."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from conftest import make_sentences
from trainer import schemes
from trainer.errors import InputError
from trainer.inference import TokenClassifier, assign_words, load_classifier, plan_windows, split_words


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


# Tricky sequences per scheme: (tags, the spans seqeval's strict mode reads, as the metrics count them).
TRICKY = {
    "iob2": [(["O", "I-PER", "I-PER", "O"], []),  # I- after O begins nothing in strict IOB2
             (["B-PER", "I-LOC", "B-LOC"], [(0, 1, "PER"), (2, 3, "LOC")]),  # a type change inside is no span
             (["B-PER", "I-PER", "B-PER", "O", "B-LOC", "I-LOC"], [(0, 2, "PER"), (2, 3, "PER"), (4, 6, "LOC")])],
    "iob1": [(["I-PER", "I-PER", "B-PER", "O", "I-LOC"], [(0, 2, "PER"), (2, 3, "PER"), (4, 5, "LOC")]),
             (["I-PER", "I-LOC", "B-LOC"], [(0, 1, "PER"), (1, 2, "LOC"), (2, 3, "LOC")]),
             (["B-PER", "O"], [(0, 1, "PER")])],
    "bioes": [(["B-PER", "I-PER", "O"], []),  # a B- that no E- closes is no span
              (["I-PER", "E-PER", "S-PER", "E-PER"], [(2, 3, "PER")]),
              (["B-PER", "E-LOC", "B-ORG", "I-ORG", "E-ORG", "S-LOC"], [(2, 5, "ORG"), (5, 6, "LOC")])],
    "bilou": [(["B-PER", "I-PER", "O", "U-LOC"], [(3, 4, "LOC")]),
              (["B-PER", "L-PER", "L-PER", "U-PER"], [(0, 2, "PER"), (3, 4, "PER")])],
    "plain": [(["PER", "PER", "O", "LOC"], [(0, 1, "PER"), (1, 2, "PER"), (3, 4, "LOC")]),  # each word on its own
              (["B_PER", "I_PER"], [(0, 1, "B_PER"), (1, 2, "I_PER")])],  # "_" is no span separator
}


def _render(spans, length: int, scheme: str) -> list[str]:
    """Well-formed tags of `scheme` holding exactly `spans` (IOB2 for iob1 too: its conversion keeps them)."""
    tags = ["O"] * length
    first, inside, last, single = {"bioes": "BIES", "bilou": "BILU"}.get(scheme, "BIIB")
    for a, b, kind in spans:
        if scheme == "plain":
            tags[a] = kind
            continue
        tags[a:b] = [f"{first}-{kind}"] + [f"{inside}-{kind}"] * (b - a - 2) + [f"{last}-{kind}"] * (b - a > 1)
        if b - a == 1:
            tags[a] = f"{single}-{kind}"
    return tags


@pytest.mark.parametrize("scheme,tags,expected", [(s, t, e) for s, cases in TRICKY.items() for t, e in cases])
def test_served_spans_are_the_entities_the_metrics_count(scheme, tags, expected):
    from trainer.metrics import scores

    spans = schemes.spans(tags, scheme)
    assert spans == expected
    # the metrics, scoring the gold tags against tags that hold exactly the served spans, find every span and no other
    overall, per_label = scores([tags], [_render(spans, len(tags), scheme)], scheme)
    assert sum(v["number"] for v in per_label.values()) == len(spans)
    if spans:
        assert overall["precision"] == overall["recall"] == 1.0


def test_the_label_set_implies_a_scheme_when_none_is_recorded():
    assert schemes.of_labels(["O", "B-PER", "I-PER"]) == "iob2"
    assert schemes.of_labels(["O", "B-PER", "E-PER", "S-PER"]) == "bioes"
    assert schemes.of_labels(["O", "U-PER", "L-PER", "B-PER"]) == "bilou"
    assert schemes.of_labels(["O", "B_PER", "I_PER"]) == schemes.of_labels(["NOUN", "B-X"]) == "plain"


class _FixedLabels:
    """A backend whose prediction for every sub-token is the label `labels` gives its token id."""

    input_names = ("input_ids",)

    def __init__(self, labels: dict[int, int], classes: int):
        self.labels, self.classes = labels, classes

    def __call__(self, batch):
        ids = batch["input_ids"]
        logits = np.zeros(ids.shape + (self.classes,), dtype=np.float32)
        for index, label in np.ndenumerate(np.vectorize(lambda i: self.labels.get(int(i), 0))(ids)):
            logits[index + (label,)] = 10.0
        return logits


def test_the_classifier_reads_entities_in_its_tag_scheme(classifier):
    classes = ["O", "B-person", "I-person"]
    tokenizer = classifier.tokenizer
    predicted = {tokenizer.convert_tokens_to_ids(w): k for w, k in (("alice", 2), ("smith", 2), ("bob", 1))}
    words = ["the", "alice", "smith", "met", "bob"]
    entities = {}
    for scheme in ("iob2", "iob1", None):
        model = TokenClassifier(_FixedLabels(predicted, 3), tokenizer, dict(enumerate(classes)), tag_scheme=scheme)
        [prediction] = model.predict([words])
        assert prediction.labels == ["O", "I-person", "I-person", "O", "B-person"]
        entities[scheme] = [e["text"] for e in prediction.entities]
    assert entities == {"iob2": ["bob"], "iob1": ["alice smith", "bob"], None: ["bob"]}  # None: IOB2, the labels'
    with pytest.raises(InputError, match="the model's tag scheme does not fit its labels: tag_scheme=iob2 but the "
                                         "labels use the prefix"):
        TokenClassifier(_FixedLabels({}, 2), tokenizer, {0: "O", 1: "S-person"}, tag_scheme="iob2")


def test_every_output_carries_the_recorded_tag_scheme(tiny_finetuned, tmp_path):
    import mlflow.models

    from trainer.mlflow_model import save_mlflow_model
    from trainer.onnx_export import export_onnx

    recorded = json.loads((tiny_finetuned["pytorch"] / "metrics.json").read_text())["tag_scheme"]
    assert recorded == "iob2"
    assert load_classifier(tiny_finetuned["pytorch"]).tag_scheme == load_classifier(tiny_finetuned["mlflow"]).tag_scheme
    # the MLflow model was written before metrics.json: the scheme came from the data finetune_args.json names
    served = tiny_finetuned["mlflow"] / "artifacts" / "model"
    assert json.loads((served / "tag_scheme.json").read_text()) == {"tag_scheme": recorded}
    assert mlflow.models.Model.load(str(tiny_finetuned["mlflow"])).metadata["tag_scheme"] == recorded
    # an IOB1 run (metrics.json says so): its folder and the MLflow model made from it read IOB1
    folder = tmp_path / "iob1"
    shutil.copytree(tiny_finetuned["pytorch"], folder, ignore=shutil.ignore_patterns("checkpoint-*"))
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "tag_scheme": "iob1"}))
    assert load_classifier(folder).tag_scheme == "iob1"
    save_mlflow_model(folder, tmp_path / "mlflow")
    assert load_classifier(tmp_path / "mlflow").tag_scheme == "iob1"
    assert json.loads((tiny_finetuned["onnx"] / "tag_scheme.json").read_text()) == {"tag_scheme": recorded}
    export_onnx(folder, tmp_path / "onnx")  # the ONNX folder carries it too (its labels alone would say IOB2)
    assert load_classifier(tmp_path / "onnx").tag_scheme == "iob1"
    (folder / "metrics.json").write_text(json.dumps({**metrics, "tag_scheme": "iob3"}))
    with pytest.raises(InputError, match=r"metrics\.json: tag_scheme='iob3' is not one of"):
        load_classifier(folder)


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
    import pandas as pd

    missing = ["", "   \t", None, [], float("nan"), np.float32("nan"), pd.NA, pd.NaT]
    results = classifier.predict([*missing, "alice lives in paris ."])
    assert [r.words for r in results[:-1]] == [[]] * len(missing)
    assert [r.entities for r in results[:-1]] == [[]] * len(missing)
    assert results[-1].labels == ["B-person", "O", "O", "B-location", "O"]
    assert classifier.predict([]) == []
    # a missing word is a blank word (the unknown token), kept one for one; what is neither text nor words is refused
    assert classifier.predict([["alice", None, pd.NA, "paris"]])[0].words == ["alice", "", "", "paris"]
    with pytest.raises(InputError, match="expected a text or a list of words, got int"):
        classifier.predict([5])
    with pytest.raises(InputError, match="expected a text or a list of words, got bytes"):
        classifier.predict([b"alice"])
    with pytest.raises(InputError, match="a word must be a string, got list"):
        classifier.predict([["alice", ["paris"]]])
    # any sequence of words is a word list: a pandas Series or string array too
    rows = [pd.Series(["alice", "paris"]), pd.array(["alice", None], dtype="string"), ("alice", 7)]
    assert [r.words for r in classifier.predict(rows)] == [["alice", "paris"], ["alice", ""], ["alice", "7"]]


def test_emoji_non_latin_and_unpredictable_words(classifier):
    text = "alice 😀 москва 東京 \u200b paris"
    prediction = classifier.predict([text])[0]
    assert prediction.words == ["alice", "😀", "москва", "東", "京", "\u200b", "paris"]
    assert len(prediction.labels) == len(prediction.words)
    # the tokenizer drops a lone zero-width space: encoded as the unknown token, as preprocess trains it
    assert all(s is not None for s in prediction.scores)
    as_unknown = classifier.predict([[*prediction.words[:5], classifier.tokenizer.unk_token, "paris"]])[0]
    np.testing.assert_allclose(prediction.probabilities, as_unknown.probabilities, rtol=1e-5)
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


def _without_token_types(folder, model_cls, config):
    """A model folder whose tokenizer makes no token_type_ids (RoBERTa's, GPT-2's), the model `model_cls(config)`."""
    from conftest import build_tokenizer

    from transformers import AutoTokenizer

    build_tokenizer(folder)
    settings = folder / "tokenizer_config.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()),
                                    "model_input_names": ["input_ids", "attention_mask"]}))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model_cls(config(len(tokenizer), tokenizer.pad_token_id)).save_pretrained(folder)
    return tokenizer


def test_a_model_trained_without_token_type_ids_is_served_without_them(tmp_path):
    """GPT-2 adds an embedding of every token type id, 0 included: served zeros it never trained with (the rows of
    a tokenizer without token_type_ids have none) moved its probabilities by up to 0.04."""
    from transformers import AutoModelForTokenClassification, GPT2Config, GPT2ForTokenClassification

    from trainer.inference import load_classifier

    folder = tmp_path / "gpt2"
    tokenizer = _without_token_types(folder, GPT2ForTokenClassification, lambda vocab, pad: GPT2Config(
        vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64, num_labels=3, pad_token_id=pad))
    words = ["alice", "smith", "lives", "in", "paris"]
    served = load_classifier(folder).predict([words])[0]
    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    encoding = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    assert "token_type_ids" not in encoding
    with torch.inference_mode():
        probabilities = model(**encoding).logits.softmax(-1)[0]
    first = {}
    for position, word in enumerate(encoding.word_ids(0)):
        if word is not None:
            first.setdefault(word, position)
    expected = probabilities[[first[w] for w in range(len(words))]].numpy()
    np.testing.assert_allclose(served.probabilities, expected, atol=1e-6)


def test_an_onnx_export_takes_the_inputs_the_tokenizer_makes(tmp_path):
    """RoBERTa's forward takes token_type_ids, its tokenizer makes none: the export looked them up and failed, so
    RoBERTa and XLM-R fine-tunes had no ONNX model."""
    from transformers import BertConfig, BertForTokenClassification

    from trainer.inference import load_classifier
    from trainer.onnx_export import export_onnx

    folder = tmp_path / "model"
    _without_token_types(folder, BertForTokenClassification, lambda vocab, pad: BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=3))
    record = export_onnx(folder, tmp_path / "onnx")
    assert record["inputs"] == ["input_ids", "attention_mask"]
    texts = ["alice smith lives in paris", "bob works for acme corp"]
    onnx, torch_ = load_classifier(tmp_path / "onnx").predict(texts), load_classifier(folder).predict(texts)
    for a, b in zip(onnx, torch_):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
