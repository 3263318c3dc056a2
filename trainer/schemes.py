"""Tag schemes: which one a labelled data set uses, and what a span is in each.

- `iob2`: B- begins every span, I- continues it (WNUT-17; CoNLL-2003 as the HF hub has it). Scored with seqeval,
  strict IOB2.
- `iob1`: I- begins a span; B- only where a span follows one of the same type (CoNLL-2003 as first released).
  Converted to IOB2 (`iob1_to_iob2`), then scored as IOB2.
- `bioes` (IOBES): B-/I-/E- for multi-word spans, S- for one-word spans. seqeval, strict IOBES.
- `bilou`: the same with L- (last) and U- (unit). seqeval, strict BILOU.
- `plain`: tags without span prefixes (POS tags, any tag set): each word's tag is scored on its own.

"O" is the outside tag; a span prefix is one of B I E S L U and a hyphen ("B_PER" is a plain tag). `resolve()`
detects the scheme from the tag sequences (IOB1 and IOB2 share a label set: where spans begin tells them apart) or
checks an explicit choice against the labels; `spans()` reads a tag sequence's spans as the metrics count them.
"""

from __future__ import annotations

import logging
import re
from typing import Iterable, Optional, Sequence

from trainer.errors import InputError, preview

logger = logging.getLogger(__name__)

OUTSIDE = "O"
AUTO = "auto"
SCHEMES = ("iob1", "iob2", "bioes", "bilou", "plain")
SPAN_SCHEMES = ("iob1", "iob2", "bioes", "bilou")
PREFIXES = {"iob1": "BI", "iob2": "BI", "bioes": "BIES", "bilou": "BILU"}
NAMES = {"iob1": "IOB1", "iob2": "IOB2", "bioes": "BIOES", "bilou": "BILOU", "plain": "plain tags"}
_PREFIXED = re.compile(r"^([BIESLU])-(.+)$")
_OTHER_SEPARATOR = re.compile(r"^[BIESLU][_.:].+$")


class LabelError(InputError):
    """An InputError about particular labels (`labels`), so that a caller holding the data can say where they are."""

    def __init__(self, message: str, labels: Sequence[str]):
        super().__init__(message)
        self.labels = list(labels)


def split_tag(tag: str) -> tuple[Optional[str], str]:
    """("B", "PER") for "B-PER"; (None, tag) for "O" and tags without a span prefix."""
    match = _PREFIXED.match(tag)
    return (match.group(1), match.group(2)) if match else (None, tag)


def is_span(scheme: Optional[str]) -> bool:
    return scheme in SPAN_SCHEMES


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB1 -> IOB2: an I- that does not continue a span of its type begins one (becomes B-)."""
    out: list[str] = []
    previous = OUTSIDE
    for tag in tags:
        prefix, kind = split_tag(tag)
        if prefix == "I" and (previous == OUTSIDE or split_tag(previous)[1] != kind):
            tag = f"B-{kind}"
        out.append(tag)
        previous = tag
    return out


def _label_prefixes(labels: Iterable[str]) -> tuple[set[str], list[str], list[str]]:
    """(span prefixes used, prefixed labels, labels without a prefix other than O)."""
    prefixes, prefixed, plain = set(), [], []
    for label in sorted(set(labels)):
        prefix, _ = split_tag(label)
        if prefix:
            prefixes.add(prefix)
            prefixed.append(label)
        elif label != OUTSIDE:
            plain.append(label)
    return prefixes, prefixed, plain


def _iob_starts(sequences: Iterable[Sequence[str]]) -> tuple[int, int, Optional[int]]:
    """How spans begin: (I- starts, as in IOB1; B- starts after O or another type, as in IOB2; first sentence
    index with an I- start)."""
    i_starts = b_starts = 0
    first_i = None
    for number, tags in enumerate(sequences):
        previous = OUTSIDE
        for tag in tags:
            prefix, kind = split_tag(tag)
            continues = previous != OUTSIDE and split_tag(previous)[1] == kind
            if prefix == "I" and not continues:
                i_starts += 1
                first_i = number if first_i is None else first_i
            elif prefix == "B" and not continues:
                b_starts += 1
            previous = tag
    return i_starts, b_starts, first_i


def detect(sequences: Sequence[Sequence[str]]) -> str:
    """The scheme of tag sequences (see the module docstring); LabelError when prefixed and plain tags mix."""
    labels = {tag for tags in sequences for tag in tags}
    prefixes, prefixed, plain = _label_prefixes(labels)
    if not prefixes:
        if plain and all(_OTHER_SEPARATOR.match(label) for label in plain):
            logger.warning("the tags %s look like span tags with another separator than '-': they are scored as "
                           "plain tags; write them as B-PER, I-PER, ... for entity-level scores", preview(plain, 3))
        return "plain"
    if plain:
        raise LabelError(f"the tags mix span-prefixed labels {preview(prefixed, 3)} with labels without a B-/I- "
                         f"prefix {preview(plain, 3)}: set tag_scheme=plain to score every tag on its own, or fix "
                         f"the labels", plain)
    if prefixes & set("LU") and prefixes & set("ES"):
        raise LabelError(f"the tags mix BIOES (E-, S-) and BILOU (L-, U-) prefixes {preview(prefixed, 6)}: use one "
                         f"scheme, or set tag_scheme=plain", [t for t in prefixed if split_tag(t)[0] in "LU"])
    if prefixes & set("ES"):
        return "bioes"
    if prefixes & set("LU"):
        return "bilou"
    i_starts, b_starts, first_i = _iob_starts(sequences)
    if i_starts and not b_starts:
        return "iob1"
    if i_starts and b_starts:
        scheme = "iob2" if b_starts >= i_starts else "iob1"
        logger.warning("tag scheme: %d spans begin with B- (IOB2) and %d with I- (IOB1, first in sentence %d); "
                       "treating the data as %s (set tag_scheme to override)", b_starts, i_starts, first_i + 1,
                       NAMES[scheme])
        return scheme
    return "iob2"


def check(scheme: str, labels: Iterable[str]) -> None:
    """An explicit scheme must fit the labels: LabelError naming the labels that do not."""
    if scheme == "plain":
        return
    prefixes, prefixed, plain = _label_prefixes(labels)
    if plain:
        raise LabelError(f"tag_scheme={scheme} but the labels {preview(plain, 3)} have no span prefix "
                         f"({'/'.join(PREFIXES[scheme])}-): use tag_scheme=plain or auto", plain)
    foreign = sorted(prefixes - set(PREFIXES[scheme]))
    if foreign:
        examples = [label for label in prefixed if split_tag(label)[0] in foreign]
        raise LabelError(f"tag_scheme={scheme} but the labels use the prefix(es) {', '.join(foreign)} "
                         f"({preview(examples, 3)}): use tag_scheme=auto or the matching scheme", examples)


def resolve(requested: str, sequences: Sequence[Sequence[str]]) -> str:
    """The scheme to use: `requested`, checked against the tags, or detected when it is "auto"."""
    if requested == AUTO:
        return detect(sequences)
    if requested not in SCHEMES:
        raise InputError(f"unknown tag scheme {requested!r}: one of {', '.join(SCHEMES)} or auto")
    check(requested, {tag for tags in sequences for tag in tags})
    if is_span(requested):
        _check_spans(requested, sequences)
    return requested


def _coverage(sequences: Sequence[Sequence[str]], scheme: str) -> tuple[int, int]:
    """(tagged words, tagged words inside an entity of `scheme`, as the metrics read them)."""
    tagged = covered = 0
    for tags in sequences:
        tagged += sum(tag != OUTSIDE for tag in tags)
        covered += sum(end - start for start, end, _ in spans(tags, scheme))
    return tagged, covered


def _check_spans(scheme: str, sequences: Sequence[Sequence[str]]) -> None:
    """An explicit span scheme must read the tags as entities: when most tagged words would fall outside every
    entity under it (IOB2 data read as strict BIOES: B-PER alone is no entity there) while the scheme the tags show
    reads them, InputError naming both, instead of training a model whose entity F1 is 0."""
    tagged, covered = _coverage(sequences, scheme)
    if not tagged or covered * 2 >= tagged:
        return
    detected = detect(sequences)
    if detected != scheme and _coverage(sequences, detected)[1] > covered:
        raise InputError(f"tag_scheme={scheme} reads {tagged - covered} of the {tagged} tagged words as no entity "
                         f"({NAMES[scheme]} spans are strict); the tags look like {NAMES[detected]}: set "
                         f"tag_scheme=auto or {detected}")


def continuation_ids(class_names: Sequence[str], scheme: str) -> list[int]:
    """For each label id, the label of a word's continuation sub-tokens (label_all_tokens): inside a span the
    I- tag of its type where the label set has one (B-PER -> I-PER, S-PER -> I-PER); the word's own tag otherwise."""
    index = {name: i for i, name in enumerate(class_names)}
    out = []
    for i, name in enumerate(class_names):
        prefix, kind = split_tag(name) if is_span(scheme) else (None, name)
        out.append(index.get(f"I-{kind}", i) if prefix and prefix != "I" else i)
    return out


def of_labels(labels: Iterable[str]) -> str:
    """The scheme a label set implies on its own (a model that recorded none): BIOES or BILOU by their prefixes,
    IOB2 for B-/I- (IOB1 has the same labels: only tag sequences tell them apart), plain when no label has a span
    prefix or when the labels mix prefixed and plain tags."""
    prefixes, _, plain = _label_prefixes(labels)
    if not prefixes or plain or (prefixes & set("LU") and prefixes & set("ES")):
        return "plain"
    return "bioes" if prefixes & set("ES") else "bilou" if prefixes & set("LU") else "iob2"


def spans(tags: Sequence[str], scheme: str) -> list[tuple[int, int, str]]:
    """The spans (first, last + 1, type) of one tag sequence as the metrics count them: seqeval's strict entities of
    the scheme for span tags (IOB1 converted to IOB2 first), so an I- after O in IOB2 or a B- that no E- closes in
    BIOES is no span; for plain tags every word whose tag is not O, on its own."""
    if not is_span(scheme):
        return [(i, i + 1, tag) for i, tag in enumerate(tags) if tag != OUTSIDE]
    from seqeval.scheme import Entities

    tags = iob1_to_iob2(tags) if scheme == "iob1" else list(tags)
    return [(e.start, e.end, e.tag) for e in Entities([tags], seqeval_scheme(scheme)).entities[0]]


def seqeval_scheme(scheme: str):
    """The seqeval scheme class for strict span matching (IOB1 is converted to IOB2 first)."""
    from seqeval.scheme import BILOU, IOB2, IOBES

    return {"iob1": IOB2, "iob2": IOB2, "bioes": IOBES, "bilou": BILOU}[scheme]
