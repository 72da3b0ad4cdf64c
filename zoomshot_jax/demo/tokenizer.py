"""A word-level tokenizer for the demo world's tiny CLIP, in HF format.

The world's language is a few dozen words, so every word is one token. The
files are the `tokenizers` library's tokenizer.json wrapped by
PreTrainedTokenizerFast, which `AutoTokenizer.from_pretrained(dir)` loads like
any hub tokenizer: the rest of the library reads the tiny CLIP exactly as it
reads OpenAI's.
"""

from __future__ import annotations

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"


def save_word_tokenizer(path: str, words: list[str], max_length: int,
                        pairs: bool = False) -> int:
  """Writes the tokenizer for `words` to `path`; returns the vocabulary size.

  Text is lowercased and split at whitespace and punctuation; unknown words map
  to <unk>. Sequences are <bos> words <eos>. EOS has the highest id, as in
  OpenAI's vocabulary: the CLIP text tower pools the EOS position. With
  `pairs`, a text pair is <bos> A <eos> B <eos>, B's tokens of type 1 (BERT's
  layout, for the VL student's two-segment inputs).
  """
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top

  vocab = [PAD, UNK] + sorted(set(words) - {PAD, UNK, BOS, EOS}) + [BOS, EOS]
  ids = {w: i for i, w in enumerate(vocab)}
  tok = Tokenizer(models.WordLevel(ids, unk_token=UNK))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(
      single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B:1 {EOS}:1" if pairs else None,
      special_tokens=[(BOS, ids[BOS]), (EOS, ids[EOS])])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                 pad_token=PAD, unk_token=UNK, model_max_length=max_length)
  fast.save_pretrained(path)
  return len(vocab)
