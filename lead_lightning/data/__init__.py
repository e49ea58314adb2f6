"""Instruction data: records and readers, the prompt template, tokenization/collation, the datamodule."""

from lead_lightning.data.arrow import ArrowInstructionDataset, ArrowRecords
from lead_lightning.data.collate import (
    IGNORE_INDEX,
    TRUNCATION_MODES,
    InstructionCollator,
    TruncationStats,
    fit_to_length,
    tokenize_records,
)
from lead_lightning.data.datamodule import InstructionDataModule
from lead_lightning.data.dataset import InstructionDataset, LengthBucketBatchSampler
from lead_lightning.data.records import (
    READERS,
    InstructionRecord,
    iter_records,
    read_alpaca_jsonl,
    read_bbh,
    read_chat_jsonl,
    read_gsm8k,
    read_records,
    records_from_hf,
)
from lead_lightning.data.synthetic import (
    SYNTHETIC_FAMILIES,
    generate_family,
    generate_pool,
    near_duplicates,
    plant_noise,
)
from lead_lightning.data.templates import TEMPLATES, PromptTemplate, get_template

__all__ = [
    "ArrowInstructionDataset",
    "ArrowRecords",
    "IGNORE_INDEX",
    "READERS",
    "SYNTHETIC_FAMILIES",
    "TEMPLATES",
    "TRUNCATION_MODES",
    "InstructionCollator",
    "InstructionDataModule",
    "InstructionDataset",
    "InstructionRecord",
    "LengthBucketBatchSampler",
    "PromptTemplate",
    "TruncationStats",
    "fit_to_length",
    "generate_family",
    "generate_pool",
    "get_template",
    "iter_records",
    "near_duplicates",
    "plant_noise",
    "read_alpaca_jsonl",
    "read_bbh",
    "read_chat_jsonl",
    "read_gsm8k",
    "read_records",
    "records_from_hf",
    "tokenize_records",
]
