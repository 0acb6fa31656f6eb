"""A tiny random BERT with its WordPiece tokenizer, written as a local Hugging Face folder (no download)."""

from pathlib import Path

WORDS = [
    "the",
    "a",
    "film",
    "movie",
    "is",
    "was",
    "good",
    "great",
    "fine",
    "bad",
    "awful",
    "dull",
    "boring",
    "funny",
    "fun",
    "story",
    "plot",
    "actors",
    "not",
    "very",
    "and",
    "but",
    "it",
    "this",
    "that",
    "of",
    "to",
    "best",
    "worst",
    "love",
    "hate",
]


def tiny_bert_folder(folder: Path, *, hidden: int = 16, layers: int = 2, words: list[str] = WORDS) -> Path:
    """Write a tiny random BertForSequenceClassification (safetensors) and its fast tokenizer to `folder`."""
    import tokenizers  # imported here: test modules import this helper before skipping without transformers
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    wp = tokenizers.Tokenizer(
        tokenizers.models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]")
    )
    wp.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    wp.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=wp,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    tok.save_pretrained(str(folder))
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    transformers.set_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(str(folder))
    return folder
