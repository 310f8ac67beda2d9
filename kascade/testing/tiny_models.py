"""Tiny random models on disk, for tests and benchmarks of the plumbing (never of quality).

Nothing is downloaded: the tokenizer is a byte-level BPE trained in
milliseconds on a small fixed corpus, the weights are random from a seed. The
tokenizer does not depend on the seed, so models built with different seeds
share one vocabulary (as a real student/teacher pair must) while their weights,
and therefore their answers and confidences, differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (PAD_TOKEN, "<|im_start|>", EOS_TOKEN)

# ChatML, as Qwen and SmolLM2 use; message content is already plain text here.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = """\
The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.
Hello! How are you today? I am fine, thank you. What is your name? My name is Kascade.
A small model answers first; when it is not confident, a large model answers instead.
Knowledge distillation trains a small student model to imitate a large teacher model.
The cat sat on the mat. The dog ran in the park. The sun is hot and the sky is blue.
One two three four five six seven eight nine ten. 1 + 1 = 2. 2 + 2 = 4. 10 * 10 = 100.
def add(a, b):
    return a + b
print("hello world")
Kubernetes runs containers in pods. A deployment keeps replicas running on nodes.
This movie was great, I loved it. This movie was terrible, I hated it. It was fine.
Please answer the question in one short sentence. Yes. No. Maybe. Thank you, goodbye.
"""


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes, no unknown tokens) with ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS.splitlines(keepends=True) * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _llama_config(tokenizer: PreTrainedTokenizerFast, *, hidden_size: int, layers: int, **extra: Any):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        # Wider than the usual 0.02 so the random next-token distributions are
        # peaked and vary between prompts: confidence scores then spread out.
        initializer_range=0.3,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_tiny_causal_lm(out_dir: Path, *, seed: int, hidden_size: int = 32, layers: int = 2) -> Path:
    """Save a random LlamaForCausalLM with a chat template into `out_dir`; returns `out_dir`."""
    import torch
    from transformers import LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer()
    config = _llama_config(tokenizer, hidden_size=hidden_size, layers=layers)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        # Random weights make EOS as likely as any token, so answers would end
        # after a handful of tokens by chance. A zero row gives EOS a logit of 0,
        # the middle of the pack: answers then run to max_tokens (or a stop string).
        model.lm_head.weight[tokenizer.eos_token_id] = 0.0
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_classifier(
    out_dir: Path,
    *,
    seed: int,
    labels: Sequence[str] = ("negative", "positive"),
    hidden_size: int = 32,
    layers: int = 2,
) -> Path:
    """Save a random LlamaForSequenceClassification labelled with `labels` into `out_dir`."""
    import torch
    from transformers import LlamaForSequenceClassification

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer()
    config = _llama_config(
        tokenizer,
        hidden_size=hidden_size,
        layers=layers,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_sentence_encoder(out_dir: Path, *, seed: int, hidden_size: int = 32, layers: int = 2) -> Path:
    """Save a random BertModel (an encoder, as MiniLM is) with the tiny tokenizer into `out_dir`; returns `out_dir`."""
    import torch
    from transformers import BertConfig, BertModel

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    BertModel(config).eval().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
