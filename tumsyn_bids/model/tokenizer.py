"""CLIP byte-pair tokenizer, as TUMSyn's stage-1 text encoder was trained with it.

TUMSyn reuses OpenAI CLIP's BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``, MIT licence, see
``tumsyn_bids/data/LICENSE-CLIP-VOCAB``) with a context of 90 tokens instead of CLIP's 77. The
token ids must be bit-identical to the authors' tokenizer, otherwise the published text encoder
sees different inputs; this module reimplements the published algorithm:

1. clean the text (``ftfy.fix_text``, HTML-unescape twice, collapse whitespace, lower-case);
2. split it with CLIP's regular expression (letters runs, single digits, punctuation runs);
3. map every UTF-8 byte to a printable unicode character and merge pairs by BPE rank;
4. frame the ids with start/end-of-text and zero-pad to the context length.
"""

from __future__ import annotations

import gzip
import hashlib
import html
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import ftfy
import regex

if TYPE_CHECKING:
    import torch

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
#: TUMSyn's context length (CLIP used 77; the prompts need up to ~86 tokens).
CONTEXT_LENGTH = 90
#: CLIP keeps the first 48894 merges, for a vocabulary of 2 x 256 byte symbols + merges + 2 = 49408.
N_MERGES = 49152 - 256 - 2
SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"

_SPLIT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


class PromptTooLongError(ValueError):
    """A prompt needs more tokens than the text encoder's context holds."""

    def __init__(self, text: str, n_tokens: int, context_length: int) -> None:
        super().__init__(
            f"prompt needs {n_tokens} tokens but the text encoder's context holds "
            f"{context_length}: {text!r}"
        )
        self.text = text
        self.n_tokens = n_tokens
        self.context_length = context_length


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """Map each of the 256 byte values to a printable character (CLIP's reversible scheme)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clean_text(text: str) -> str:
    """Normalise text exactly as CLIP's tokenizer does before splitting it."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class BPETokenizer:
    """Byte-level BPE over the CLIP vocabulary; ``encode`` returns ids without SOT/EOT."""

    def __init__(self, merges_text: str) -> None:
        lines = merges_text.split("\n")[1 : N_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        alphabet = list(_byte_alphabet().values())
        vocab = alphabet + [ch + "</w>" for ch in alphabet]
        vocab += ["".join(pair) for pair in merges]
        vocab += [SOT_TEXT, EOT_TEXT]
        self.encoder: dict[str, int] = {piece: i for i, piece in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: piece for piece, i in self.encoder.items()}
        self.ranks: dict[tuple[str, ...], int] = {pair: i for i, pair in enumerate(merges)}
        self.sot = self.encoder[SOT_TEXT]
        self.eot = self.encoder[EOT_TEXT]
        self._cache: dict[str, list[str]] = {SOT_TEXT: [SOT_TEXT], EOT_TEXT: [EOT_TEXT]}

    def _merge(self, word: str) -> list[str]:
        """Apply merges by increasing rank until none applies; the last symbol ends the word."""
        if word in self._cache:
            return self._cache[word]
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = {(a, b) for a, b in zip(symbols, symbols[1:], strict=False)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self._cache[word] = symbols
        return symbols

    def pieces(self, text: str) -> list[str]:
        """The BPE pieces of ``text`` (useful to explain why a prompt is long)."""
        alphabet = _byte_alphabet()
        out: list[str] = []
        for token in _SPLIT.findall(clean_text(text)):
            mapped = "".join(alphabet[b] for b in token.encode("utf-8"))
            out.extend(self._merge(mapped))
        return out

    def encode(self, text: str) -> list[int]:
        return [self.encoder[p] for p in self.pieces(text)]

    def decode(self, ids: Iterable[int]) -> str:
        inverse = {v: k for k, v in _byte_alphabet().items()}
        chars = "".join(self.decoder[int(i)] for i in ids)
        data = bytearray(inverse[c] for c in chars.replace("</w>", " ") if c in inverse)
        return data.decode("utf-8", errors="replace").replace("\x00", "")


def _read_vocabulary() -> str:
    """Read the packaged vocabulary and refuse a file that is not the published one."""
    blob = resources.files("tumsyn_bids.data").joinpath(VOCAB_FILE).read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != VOCAB_SHA256:
        raise RuntimeError(
            f"the packaged BPE vocabulary {VOCAB_FILE} has sha256 {digest}, expected "
            f"{VOCAB_SHA256}; reinstall tumsyn-bids"
        )
    return gzip.decompress(blob).decode("utf-8")


@lru_cache(maxsize=1)
def get_tokenizer() -> BPETokenizer:
    """The shared tokenizer (building the merge table takes ~0.2 s, so do it once)."""
    return BPETokenizer(_read_vocabulary())


def count_tokens(text: str) -> int:
    """Number of ids ``tokenize`` needs for ``text``, start and end tokens included."""
    return len(get_tokenizer().encode(text)) + 2


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """Token ids ``[N, context_length]`` (int64), zero-padded, like TUMSyn's ``tokenize``.

    Raises :class:`PromptTooLongError` naming the prompt and its token count when a prompt does
    not fit: silently truncating would drop the end-of-text token the encoder pools from.
    """
    import torch  # here, so that counting tokens (dry runs, planning) never loads torch

    if isinstance(texts, str):
        texts = [texts]
    tok = get_tokenizer()
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tok.sot, *tok.encode(text), tok.eot]
        if len(ids) > context_length:
            raise PromptTooLongError(text, len(ids), context_length)
        result[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return result
