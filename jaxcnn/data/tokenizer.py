"""CLIP's text tokenizer: the same token ids as `open_clip.tokenize`, with the BPE run by HF `tokenizers`.

    tokenize(["a photo of a cat", ...], context_length=77) -> np.int32 [N, 77]
    decode(ids) -> ["a photo of a cat", ...]

The steps are open_clip's `SimpleTokenizer` (itself OpenAI CLIP's): text cleaned with ftfy, HTML
entities unescaped twice, whitespace runs collapsed, lower-cased; split into words with the same
regular expression (`regex` package, so the Unicode classes are the same); each word's UTF-8 bytes
mapped to printable characters (GPT-2's byte-to-unicode table) and merged by the byte-pair encoding
of `assets/bpe_simple_vocab_16e6.txt.gz` (OpenAI's merges, MIT licence, shipped so it works
offline) with '</w>' ending each word. The merging itself is HF `tokenizers`' BPE model.

Each row is [<start_of_text>, tokens..., <end_of_text>, 0, 0, ...]. Captions longer than the context
are truncated as open_clip does: the first `context_length` ids are kept and the last one is
replaced by <end_of_text>, so every row ends its text with the end token, which is where the text
tower pools (the largest id in the row).
"""
import functools
import gzip
import html
import os
from typing import List, Sequence, Union

import numpy as np

from jaxcnn.errors import UserError

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
SOT_ID, EOT_ID = 49406, 49407
VOCAB_SIZE = 49408
DEFAULT_CONTEXT_LENGTH = 77
_NUM_MERGES = 49152 - 256 - 2  # open_clip / OpenAI use the first 48,894 merges of the file
_WORD_PATTERN = (SOT_TOKEN + "|" + EOT_TOKEN
                 + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
BPE_PATH = os.path.join(os.path.dirname(__file__), "assets", "bpe_simple_vocab_16e6.txt.gz")


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict:
  """GPT-2's byte -> printable character table, in its order: printable bytes, then the others.

  The order matters: it is the order of the first 512 vocabulary ids.
  """
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  table = {byte: chr(byte) for byte in printable}
  others = [byte for byte in range(256) if byte not in table]
  # Control and space bytes go to unused code points above 255, in byte order.
  table.update({byte: chr(256 + i) for i, byte in enumerate(others)})
  return table


@functools.lru_cache(maxsize=None)
def _vocabulary():
  """(vocab {token: id}, merges [(a, b)]) in OpenAI's order: bytes, bytes + '</w>', merges, specials."""
  with gzip.open(BPE_PATH) as f:
    lines = f.read().decode("utf-8").split("\n")
  merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]
  symbols = list(bytes_to_unicode().values())
  tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
  return {token: i for i, token in enumerate(tokens)}, merges


@functools.lru_cache(maxsize=None)
def _bpe():
  """The HF tokenizer doing byte-level mapping + BPE on words that are already split."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab, merges = _vocabulary()
  tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>"))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  # A literal "<start_of_text>" in a caption is that special token, as in open_clip.
  tokenizer.add_special_tokens([SOT_TOKEN, EOT_TOKEN])
  return tokenizer


@functools.lru_cache(maxsize=None)
def _word_pattern():
  import regex
  return regex.compile(_WORD_PATTERN, regex.IGNORECASE)


def clean(text: str) -> str:
  """open_clip's default cleaning: ftfy, HTML unescaped twice, whitespace collapsed, lower case."""
  import ftfy
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return " ".join(text.split()).lower()


def encode(texts: Sequence[str]) -> List[List[int]]:
  """BPE ids of each text, without start/end tokens or truncation."""
  words = [_word_pattern().findall(clean(text)) for text in texts]
  # Empty texts give no words; HF wants at least one pre-token, so they are skipped.
  filled = [i for i, w in enumerate(words) if w]
  ids = [[] for _ in texts]
  if filled:
    encodings = _bpe().encode_batch([words[i] for i in filled], is_pretokenized=True, add_special_tokens=False)
    for i, encoding in zip(filled, encodings):
      ids[i] = encoding.ids
  return ids


def tokenize(texts: Union[str, Sequence[str]], context_length: int = DEFAULT_CONTEXT_LENGTH) -> np.ndarray:
  """np.int32 [N, context_length] token ids, identical to `open_clip.tokenize(texts, context_length)`."""
  if isinstance(texts, str):
    texts = [texts]
  if not all(isinstance(t, str) for t in texts):
    raise UserError(f"tokenize expects strings, got {sorted({type(t).__name__ for t in texts})}")
  if context_length < 2:
    raise UserError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
  out = np.zeros((len(texts), context_length), np.int32)
  for row, ids in zip(out, encode(texts)):
    ids = [SOT_ID] + ids[:context_length - 2] + [EOT_ID]  # truncated as open_clip: end token kept last
    row[:len(ids)] = ids
  return out


def decode(ids) -> Union[str, List[str]]:
  """Texts of token-id rows [N, L] (or one row [L]): the tokens between start and end, as cleaned text.

  Padding after the end token and the start/end tokens are dropped; words are separated by single
  spaces (the tokenizer lower-cased and re-spaced the text, so this is the cleaned caption).
  """
  ids = np.asarray(ids)
  rows = ids[None] if ids.ndim == 1 else ids
  vocab, _ = _vocabulary()
  names = {i: token for token, i in vocab.items()}
  to_byte = {c: b for b, c in bytes_to_unicode().items()}
  texts = []
  for row in rows.tolist():
    if EOT_ID in row:
      row = row[:row.index(EOT_ID)]
    if row and row[0] == SOT_ID:
      row = row[1:]
    try:
      chars = "".join(names[i] for i in row)
    except KeyError as e:
      raise UserError(f"decode: token id {e.args[0]} is outside the vocabulary (0..{VOCAB_SIZE - 1})") from None
    chars = chars.replace(SOT_TOKEN, "").replace(EOT_TOKEN, "")
    text = bytearray(to_byte[c] for c in chars).decode("utf-8", errors="replace")
    texts.append(text.replace("</w>", " ").strip())
  return texts[0] if ids.ndim == 1 else texts
