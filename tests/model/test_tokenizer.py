import json

import pytest
import torch

from tests.conftest import FULL, SMALL
from tumsyn_bids.model import tokenizer as tk
from tumsyn_bids.model.tokenizer import PromptTooLongError, count_tokens, tokenize


def _cases(folder):
    return json.loads((folder / "tokens.json").read_text())["strings"]


def _check(entry):
    if entry["ok"]:
        ids = tokenize(entry["text"])
        assert ids.dtype == torch.long and ids.shape == (1, 90)
        n = entry["n_tokens"]
        assert ids[0, :n].tolist() == entry["ids"], entry["text"]
        assert not ids[0, n:].any()
        assert tk.get_tokenizer().pieces(entry["text"]) == entry["bpe"][1:-1]
    else:
        with pytest.raises(PromptTooLongError) as err:
            tokenize(entry["text"])
        assert entry["text"] in str(err.value)
        assert f"needs {count_tokens(entry['text'])} tokens" in str(err.value)
        assert err.value.n_tokens > 90


@pytest.mark.parametrize("entry", _cases(SMALL), ids=lambda e: e["text"][:40])
def test_tokens_match_reference(entry):
    _check(entry)


@pytest.mark.skipif(not FULL.is_dir(), reason="full-size fixture (../shared) not present")
def test_tokens_match_full_reference():
    for entry in _cases(FULL):
        _check(entry)


def test_batch_and_boundary():
    short = "Age: 16; Gender: F"
    ids = tokenize([short, "T1w"])
    assert ids.shape == (2, 90)
    assert ids[0, 0] == 49406 and ids[1, 0] == 49406
    # Exactly the context length fits; one more token does not.
    fits = " ".join(["a"] * 88)
    assert count_tokens(fits) == 90
    tokenize(fits)
    with pytest.raises(PromptTooLongError, match="needs 91 tokens"):
        tokenize(fits + " a")


def test_vocabulary_hash_is_checked(monkeypatch):
    class Tampered:
        def joinpath(self, name):
            return self

        def read_bytes(self):
            return b"not the vocabulary"

    monkeypatch.setattr(tk.resources, "files", lambda pkg: Tampered())
    with pytest.raises(RuntimeError, match="sha256"):
        tk._read_vocabulary()


def test_decode_roundtrip():
    tok = tk.get_tokenizer()
    text = "modality: t2w; voxel size: (0.8, 0.8, 0.8)"
    assert tok.decode(tok.encode(text)).replace(" ", "") == text.replace(" ", "")
