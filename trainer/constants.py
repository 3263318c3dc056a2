"""Names shared by the programs of the package: file names of the folder contracts, label padding, markers."""

IGNORE_INDEX = -100  # label id of positions that are not scored (special tokens, continuation sub-tokens)
# batches per length-sorted training group (trainer/sampling.py, FinetuneConfig.length_group_batches): 18 % padding
# on WNUT-17 (8: 11 %; 32: 3 %; the stock sampler's 50: 2 %; random batches: 41 %)
LENGTH_GROUP_BATCHES = 4

# preprocess_output
SPLITS = ("train", "validation", "test")
SPLIT_FILES = {split: f"{split}.jsonl" for split in SPLITS}
CLASS_NAMES_FILE = "class_names.json"
PREPROCESS_ARGS_FILE = "preprocess_args.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")

# model_selector_output
MODEL_SELECTOR_ARGS = "model_selector_args.json"
MODEL_MARKERS = ("config.json", "adapter_config.json")

# pytorch_model_folder
BASE_MODEL_SUBDIR = "base_model"  # beside the adapter in an unmerged LoRA fine-tune output
FINETUNE_ARGS = "finetune_args.json"
METRICS_FILE = "metrics.json"  # written last: its presence means the folder is complete
PREDICTIONS_FILES = {split: f"{split}_predictions.jsonl" for split in SPLITS}  # the scored split, served-model words

# object-store staging: written by the master pod after its last upload
SUCCESS_MARKER = "_SUCCESS"
