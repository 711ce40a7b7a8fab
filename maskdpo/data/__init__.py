"""The data side of Mask-DPO: annotated samples -> pairs -> exact token masks -> packed micro-batches.

    from maskdpo.data import encode_pair, load_tokenizer, parse_pair, LabelMap
    encoded = encode_pair(parse_pair(record, LabelMap()), load_tokenizer(), max_length=1024)
"""

from .batch import LossInputs, StageInputs, pipeline_tensors, reference_for
from .encode import EncodeResult, encode_file
from .errors import RecordError
from .labels import LabelMap
from .masks import EncodedPair, EncodedSide, SkippedPair, encode_pair
from .packing import MicroBatch, Packing, pack_pairs
from .pairs import build_pairs
from .records import AnnotatedSample, Pair, Response, Sentence, pair_to_json, parse_annotated, parse_pair
from .sentences import split_sentences
from .tokenizer import load_tokenizer

__all__ = [
    "AnnotatedSample", "EncodeResult", "EncodedPair", "EncodedSide", "LabelMap", "LossInputs", "MicroBatch", "Packing",
    "Pair", "StageInputs", "pipeline_tensors", "reference_for",
    "RecordError", "Response", "Sentence", "SkippedPair", "build_pairs", "encode_file", "encode_pair",
    "load_tokenizer", "pack_pairs", "pair_to_json", "parse_annotated", "parse_pair", "split_sentences",
]
