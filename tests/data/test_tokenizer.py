"""jaxcnn.data.tokenizer against open_clip.tokenize (the reference) on a varied corpus."""
import numpy as np
import pytest

from jaxcnn.data import tokenizer
from jaxcnn.errors import UserError

CORPUS = [
    "", "   ", "a photo of a cat", "  Extra   whitespace\t\n here  ", "A HANDWRITTEN Seven!!",
    "the digit 7, 3.14159 and 1,000,000",
    "naïve café — “quotes” ‘single’ … emoji 🐱🚀 日本語のテキスト 中文 한국어 العربية русский",
    "&amp;amp; &lt;b&gt;bold&lt;/b&gt; &quot;x&quot; &#39;y&#39;",
    "it's they're we've I'm you'll he'd IT'S",
    "mojibake: Ã©tÃ© âœ”",
    "x" * 300,
    " ".join(f"word{i}" for i in range(120)),  # far more than 77 tokens: truncated
    "<start_of_text> literal <end_of_text> tokens",
    "e-mail: someone@example.com, url https://x.org/a?b=c#d",
    "tab\tsep\u00a0nbsp\u200bzero-width",
    "ÀÉÎÕÜ ß ﬁ ligature İstanbul",
    "!!!???...,,,;;;", "12345678901234567890",
    "C++ & C# (v2.0) [beta] {x} <y> |z| ~w~ ^v^ `q`",
]


def test_token_ids_equal_open_clip():
  open_clip = pytest.importorskip("open_clip")
  for context_length in (77, 16):
    ours = tokenizer.tokenize(CORPUS, context_length=context_length)
    want = open_clip.tokenize(CORPUS, context_length=context_length).numpy()
    assert ours.dtype == np.int32 and ours.shape == (len(CORPUS), context_length)
    for text, a, b in zip(CORPUS, ours, want):
      np.testing.assert_array_equal(a, b, err_msg=repr(text))


def test_rows_start_end_and_truncation():
  ids = tokenizer.tokenize(["a photo of a cat", "", "word " * 100], context_length=10)
  assert (ids[:, 0] == tokenizer.SOT_ID).all()
  np.testing.assert_array_equal(ids[1, :3], [tokenizer.SOT_ID, tokenizer.EOT_ID, 0])
  assert ids[2, -1] == tokenizer.EOT_ID and (ids[2] > 0).all()  # truncated: end token kept last
  assert (ids.argmax(-1) == [6, 1, 9]).all()  # the text tower pools at the largest id, the end token
  np.testing.assert_array_equal(tokenizer.tokenize("one text"), tokenizer.tokenize(["one text"]))


def test_decode_round_trip():
  texts = ["a photo of a cat", "  the Digit  SEVEN  ", "café 日本"]
  assert tokenizer.decode(tokenizer.tokenize(texts)) == ["a photo of a cat", "the digit seven", "café 日本"]
  assert tokenizer.decode(tokenizer.tokenize("a dog")[0]) == "a dog"


def test_bad_input():
  with pytest.raises(UserError, match="context_length"):
    tokenizer.tokenize("x", context_length=1)
  with pytest.raises(UserError, match="strings"):
    tokenizer.tokenize([b"bytes"])
  with pytest.raises(UserError, match="vocabulary"):
    tokenizer.decode([49406, 60000])
