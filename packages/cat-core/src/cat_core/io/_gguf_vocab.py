"""The tokenizer part of a GGUF file: a Hugging Face fast tokenizer as llama.cpp's vocabulary.

llama.cpp tokenizes by itself from the file's metadata, so the file must describe the same
tokenizer Caterpillar used. Two kinds are written (``tokenizer.ggml.model``):

- ``"gpt2"``, byte-level BPE (Llama 3, Qwen2/3, SmolLM2): the tokens in their byte-level
  spelling, the merges in rank order as ``"left right"``, and ``tokenizer.ggml.pre`` naming the
  llama.cpp pre-tokenizer that splits text as the Hugging Face one does. That name is read off the
  pre-tokenizer's structure (:data:`_BYTE_LEVEL_PRE`); a pre-tokenizer that is none of those is
  refused, because llama.cpp would split its text differently.
- ``"llama"``, SentencePiece-style BPE (byte fallback, ``▁`` for spaces: Gemma, Llama 2):
  llama.cpp merges the adjacent pair whose concatenation scores highest, while a Hugging Face
  tokenizer has merge ranks. A piece scores minus the rank of the first merge that makes it (and
  lower than any merge when none does), so llama.cpp merges in the order the ranks give. That is
  Hugging Face's result when the merge list holds every split of a piece, as conversions of
  SentencePiece models write it; where a split is missing, llama.cpp (like SentencePiece itself)
  may merge a pair that Hugging Face leaves apart.

Word-level, WordPiece and Unigram tokenizers are refused by name.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

#: the pre-tokenizer regexes of the byte-level tokenizers (as their tokenizer.json spells them)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

#: llama.cpp's name (``tokenizer.ggml.pre``) of each byte-level pre-tokenizer it implements the
#: same way, keyed by the pre-tokenizer's steps: ``("bytelevel",)`` is ByteLevel with GPT-2's
#: regex, ``("digits",)`` Digits(individual_digits=True), ``("split", regex)`` an isolating Split
#: followed by a ByteLevel without regex.
_BYTE_LEVEL_PRE: dict[tuple[tuple[str, ...], ...], str] = {
    (("bytelevel",),): "gpt-2",
    (("digits",), ("bytelevel",)): "smollm",  # digits one by one, then GPT-2's regex
    (("split", _LLAMA3_SPLIT),): "llama-bpe",
    (("split", _QWEN2_SPLIT),): "qwen2",
}

# llama.cpp's token types (gguf.TokenType)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclasses.dataclass
class Vocab:
    """What a GGUF file says of its tokenizer (``tokenizer.ggml.*`` and the chat template)."""

    model: str
    pre: str | None
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str] | None
    special_ids: dict[str, int]
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool | None
    chat_template: str | list[dict[str, str]] | None

    def add_to(self, writer: Any) -> None:
        writer.add_tokenizer_model(self.model)
        if self.pre is not None:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges is not None:
            writer.add_token_merges(self.merges)
        for kind, tid in self.special_ids.items():
            getattr(writer, f"add_{kind}_token_id")(tid)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template is not None:
            writer.add_chat_template(self.chat_template)


def vocab_of(tokenizer: Any, n_vocab: int, config: Any = None) -> Vocab:
    """The GGUF vocabulary of ``tokenizer`` for a model whose embedding has ``n_vocab`` rows
    (ids the tokenizer leaves free become unused ``[PAD<id>]`` tokens, as llama.cpp's converter
    writes them). ``config``: the model config, for special token ids the tokenizer lacks.

    Raises ValueError naming what llama.cpp cannot reproduce."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"tokenizer: a GGUF export needs a fast (tokenizers) tokenizer, got "
                         f"{type(tokenizer).__name__}")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"tokenizer: {type(tokenizer).__name__} is a {model.get('type')} tokenizer; a GGUF export "
                         "writes BPE tokenizers only (byte-level as 'gpt2', SentencePiece-style as 'llama')")
    spm = bool(model.get("byte_fallback"))
    tokens, types = _tokens(tokenizer, n_vocab, spm)
    merges = [_merge_pair(m) for m in model.get("merges") or []]
    ids = _special_ids(tokenizer, config, n_vocab)
    add_bos, add_eos = _adds_specials(tokenizer, ids)
    common = dict(tokens=tokens, types=types, special_ids=ids, add_bos=add_bos, add_eos=add_eos,
                  chat_template=_chat_template(tokenizer))
    if spm:
        _check_spm_shape(spec)
        return Vocab(model="llama", pre="default", scores=_spm_scores(tokens, merges), merges=None,
                     add_space_prefix=_adds_space_prefix(spec), **common)
    pre = _byte_level_pre(spec)
    for left, right in merges:
        if " " in left or " " in right:
            raise ValueError(f"tokenizer: merge {left!r} + {right!r} holds a space, which llama.cpp's "
                             "'left right' merge list cannot express")
    return Vocab(model="gpt2", pre=pre, scores=None, merges=[f"{a} {b}" for a, b in merges],
                 add_space_prefix=None, **common)


def _merge_pair(m: Any) -> tuple[str, str]:
    if isinstance(m, str):  # tokenizers before 0.20 wrote "left right"
        left, _, right = m.partition(" ")
        return left, right
    return m[0], m[1]


def _tokens(tokenizer: Any, n_vocab: int, spm: bool) -> tuple[list[str], list[int]]:
    vocab = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= n_vocab:
        raise ValueError(f"tokenizer: {len(vocab)} tokens (ids up to {max(vocab.values())}) do not fit the "
                         f"model's embedding of {n_vocab} rows")
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items()}
    unk = tokenizer.unk_token_id
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [_UNUSED] * n_vocab
    for text, i in vocab.items():
        tokens[i] = text
        if spm and _BYTE_TOKEN.fullmatch(text):  # byte fallback's pieces, whatever else they are
            types[i] = _BYTE
        elif i in added:
            types[i] = _CONTROL if added[i].special else _USER_DEFINED
        elif spm and i == unk:
            types[i] = _UNKNOWN
        else:
            types[i] = _NORMAL
    return tokens, types


def _special_ids(tokenizer: Any, config: Any, n_vocab: int) -> dict[str, int]:
    out = {}
    for kind in ("bos", "eos", "unk", "pad"):
        tid = getattr(tokenizer, f"{kind}_token_id", None)
        if tid is None and config is not None and kind != "unk":
            tid = getattr(config, f"{kind}_token_id", None)
            if isinstance(tid, (list, tuple)):
                tid = tid[0] if tid else None
        if isinstance(tid, int) and 0 <= tid < n_vocab:
            out[kind] = tid
    return out


def _adds_specials(tokenizer: Any, ids: dict[str, int]) -> tuple[bool, bool]:
    """Whether encoding adds BOS / EOS, seen on a probe text rather than read from the
    post-processor's many spellings."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    extra = len(full) - len(plain)
    add_bos = extra > 0 and "bos" in ids and full[0] == ids["bos"] and full[1:1 + len(plain)] == plain
    add_eos = extra > 0 and "eos" in ids and full[-1] == ids["eos"] and full[len(full) - 1 - len(plain):-1] == plain
    return add_bos, add_eos


def _chat_template(tokenizer: Any) -> str | list[dict[str, str]] | None:
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, dict):
        return [{"name": name, "template": t} for name, t in tpl.items()]
    return tpl if isinstance(tpl, str) else None


def _steps(node: dict | None) -> list[dict]:
    if node is None:
        return []
    if node.get("type") == "Sequence":
        return [s for child in node.get("pretokenizers", node.get("normalizers", [])) for s in _steps(child)]
    return [node]


def _byte_level_pre(spec: dict) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer, or ValueError."""
    norm = [n.get("type") for n in _steps(spec.get("normalizer"))]
    if any(n != "NFC" for n in norm):  # Qwen2's NFC only matters for text that is not NFC already
        raise ValueError(f"tokenizer: normalizer {norm} has no llama.cpp counterpart for byte-level BPE")
    steps = _steps(spec.get("pre_tokenizer"))
    key: list[tuple[str, ...]] = []
    for i, s in enumerate(steps):
        kind = s.get("type")
        last = i == len(steps) - 1
        if kind == "ByteLevel" and last and not s.get("add_prefix_space", False):
            if s.get("use_regex", True):
                key.append(("bytelevel",))
            elif not key or key[-1][0] != "split":
                key = []
                break
        elif kind == "Digits" and s.get("individual_digits"):
            key.append(("digits",))
        elif kind == "Split" and s.get("behavior") == "Isolated" and not s.get("invert", False):
            key.append(("split", (s.get("pattern") or {}).get("Regex", "")))
        else:
            key = []
            break
    name = _BYTE_LEVEL_PRE.get(tuple(key))
    if name is None:
        found = [s.get("type") for s in steps]
        raise ValueError(f"tokenizer: byte-level pre-tokenizer {found} is not one llama.cpp implements the same way "
                         f"(known: {sorted(set(_BYTE_LEVEL_PRE.values()))}); llama.cpp would split text differently")
    return name


def _check_spm_shape(spec: dict) -> None:
    """SentencePiece-style text handling that llama.cpp's "llama" tokenizer reproduces: spaces
    become ``▁`` (normalizer or Metaspace), nothing else is rewritten or split."""
    replaces_space = False
    for n in _steps(spec.get("normalizer")):
        kind = n.get("type")
        if kind == "Replace" and (n.get("pattern") or {}).get("String") == " " and n.get("content") == "▁":
            replaces_space = True
            continue
        if kind == "Prepend" and n.get("prepend") == "▁":
            continue
        raise ValueError(f"tokenizer: SentencePiece-style normalizer step {kind} has no llama.cpp counterpart")
    for p in _steps(spec.get("pre_tokenizer")):
        if p.get("type") == "Metaspace" and p.get("replacement", "▁") == "▁":
            continue
        # Gemma's split at " " comes after the normalizer turned every space into "▁": a no-op
        if replaces_space and p.get("type") == "Split" and (p.get("pattern") or {}).get("String") == " ":
            continue
        raise ValueError(f"tokenizer: SentencePiece-style pre-tokenizer {p.get('type')} has no llama.cpp counterpart")


def _adds_space_prefix(spec: dict) -> bool:
    prepends = any(n.get("type") == "Prepend" for n in _steps(spec.get("normalizer")))
    meta = [p for p in _steps(spec.get("pre_tokenizer")) if p.get("type") == "Metaspace"]
    return prepends or any(p.get("prepend_scheme", "always") != "never" and p.get("add_prefix_space", True)
                           for p in meta)


def _spm_scores(tokens: list[str], merges: list[tuple[str, str]]) -> list[float]:
    index = {t: i for i, t in enumerate(tokens)}
    scores = [-float(len(merges) + 1)] * len(tokens)  # below every merge: never preferred
    done = set()
    for rank, (left, right) in enumerate(merges):
        i = index.get(left + right)
        if i is not None and i not in done:
            scores[i] = -float(rank)
            done.add(i)
    return scores
