"""Out-of-domain (OOD) evaluation text: the GNU licences, English legal prose that no liger corpus trains on.

Why this domain: the built-in training corpus (`builtin`) is Python documentation; legal prose has another
vocabulary, sentence length and register, so perplexity and agreement here show whether a linearized model
kept the teacher's general language modelling or only fitted the training domain. The texts are long (the
GPL-3 alone is 7,657 tokens), which also gives one long natural document for perplexity by position.

Source and licence. The files in `ood_texts/` are verbatim copies of /usr/share/common-licenses/ of Debian 12
(package base-files 12.4+deb12u11), copied into the package because other machines may lack that folder. Each
file states on its own first lines, under "Copyright (C) ... Free Software Foundation, Inc.":

    Everyone is permitted to copy and distribute verbatim copies
    of this license document, but changing it is not allowed.

    GPL-3.txt     GNU General Public License, version 3, 29 June 2007
    LGPL-3.txt    GNU Lesser General Public License, version 3, 29 June 2007
    GFDL-1.3.txt  GNU Free Documentation License, version 1.3, 3 November 2008
    LGPL-2.1.txt  GNU Lesser General Public License, version 2.1, February 1999
    GPL-2.txt     GNU General Public License, version 2, June 1991
    GFDL-1.2.txt  GNU Free Documentation License, version 1.2, November 2002
    LGPL-2.txt    GNU Library General Public License, version 2, June 1991
    GPL-1.txt     GNU General Public License, version 1, February 1989

They are shipped unchanged (package data of liger.data); `ood_documents()` only strips the leading and
trailing whitespace of each. They are the licences' texts as documents to read, not licences of liger.

Never trained on. The built-in corpus reads only `pydoc_data.topics` and the docstrings of the standard
library's `.py` files (site-packages skipped), never a `.txt` file and never liger's own package: these texts
cannot enter it. Checked on CPython 3.11.7: no built-in document contains "General Public License", "Free
Documentation" or "verbatim copies"; the only overlaps are one docstring naming "GNU GPLv2"
(urllib.robotparser) and the warranty disclaimer of `unittest`'s module docstring, common licence boilerplate
("... INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR
PURPOSE. THE ..."): the longest run of words a licence here shares with the built-in corpus is those 17
words, and no 18-word run is shared (tests/test_quality.py). (Text a user passes with `--data` is not
checked.)

Token counts with the bundled SmolLM2 tokenizer (no special tokens, no EOS): GPL-3 7,657, LGPL-3 1,617,
GFDL-1.3 5,212, LGPL-2.1 5,884, GPL-2 4,054, GFDL-1.2 4,604, LGPL-2 5,621, GPL-1 2,907; all eight with an EOS
after each: 37,564.

How `ood_eval_data` splits them (no document on both sides):

- the long document: GPL-3, EOS, LGPL-3, EOS (9,276 tokens; LGPL-3 is written as additional permissions on
  top of GPL-3, so the two read as one document), cut to its first `long_tokens` tokens; what is cut off is
  not used elsewhere;
- the blocks: GFDL-1.3, LGPL-2.1, GPL-2, GFDL-1.2, LGPL-2, GPL-1 in this order, packed like `liger.data.pack`
  (EOS after each document), the first `blocks` blocks. Before packing, every paragraph (blank-line
  separated) whose whitespace-normalised text is also a paragraph of GPL-3 or LGPL-3 is removed from them
  (GPL-2 loses 8 such paragraphs, e.g. "Preamble", "END OF TERMS AND CONDITIONS" and the "How to Apply These
  Terms" notice; GFDL-1.3 2, LGPL-2.1 3, LGPL-2 3, GPL-1 5). So the long document and the blocks share no
  paragraph; related licences still share phrases inside paragraphs (about a fifth of GPL-2's 12-word runs
  occur in GPL-3). The six give 27,754 tokens, 54 blocks of 512; the first 24 come from GFDL-1.3, LGPL-2.1
  and GPL-2 (14,765 tokens, 28 blocks' worth).

`ood_long_document` (bench/position_ppl.py) is all eight in the order above, verbatim, EOS after each, up to
37,564 tokens; its first 9,276 tokens are the long document of `ood_eval_data`. Past that it holds the blocks'
documents, and older versions of the same licences recur, each at least 8,600 tokens after the end of the newer one
(GFDL-1.3 at 9.3K-14.5K tokens, GFDL-1.2 at 24.4K-29.0K; LGPL-2.1 14.5K-20.4K, LGPL-2 29.0K-34.7K; GPL-2
20.4K-24.4K, GPL-1 34.7K-37.6K): a model that could copy across that distance would gain there.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

import torch

from ..errors import DataError
from . import pack
from .text import paragraphs

__all__ = ["OOD_DESCRIPTION", "LONG_NAMES", "BLOCK_NAMES", "ood_documents", "ood_split", "ood_eval_data",
           "ood_long_document"]

LONG_NAMES = ("GPL-3", "LGPL-3")  # the long document
BLOCK_NAMES = ("GFDL-1.3", "LGPL-2.1", "GPL-2", "GFDL-1.2", "LGPL-2", "GPL-1")  # the blocks, in packing order
NAMES = LONG_NAMES + BLOCK_NAMES
OOD_DESCRIPTION = ("GNU licence texts (long document: GPL-3 + LGPL-3; blocks: GFDL-1.3, LGPL-2.1, GPL-2, ...), "
                   "English legal prose, never trained on")


@lru_cache(maxsize=1)
def _texts() -> tuple[str, ...]:
    folder = resources.files(__package__).joinpath("ood_texts")
    try:
        return tuple(folder.joinpath(f"{name}.txt").read_text(encoding="utf-8").strip() for name in NAMES)
    except (FileNotFoundError, OSError) as e:  # an install that left out the package data
        raise DataError(f"the out-of-domain texts are missing from the liger package ({e}); reinstall liger") from e


def ood_documents() -> list[str]:
    """The eight licence texts (leading and trailing whitespace stripped), in the order of `NAMES`: the long
    document's two, then the blocks' six."""
    return list(_texts())


def _key(paragraph: str) -> str:
    return re.sub(r"\s+", " ", paragraph).strip()


def ood_split() -> tuple[list[str], list[str]]:
    """(the long document's texts, the blocks' texts): GPL-3 and LGPL-3; then the six others with every
    paragraph that is also a paragraph of GPL-3 or LGPL-3 (whitespace-normalised) removed."""
    docs = ood_documents()
    long_docs, block_docs = docs[: len(LONG_NAMES)], docs[len(LONG_NAMES):]
    seen = {_key(p) for d in long_docs for p in paragraphs(d)}
    return long_docs, ["\n\n".join(p for p in paragraphs(d) if _key(p) not in seen) for d in block_docs]


def _stream(texts: list[str], tokenizer) -> torch.Tensor:
    """All tokens of `texts` as `liger.data.pack` makes them (EOS after each document): LongTensor [1, n]."""
    return pack(texts, tokenizer, 1).view(1, -1)


def ood_eval_data(tokenizer, seq_len: int, blocks: int, long_tokens: int = 8192
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(OOD blocks LongTensor [N <= blocks, seq_len], the long document LongTensor [1, L <= long_tokens] or None).

    The blocks are the first `blocks` `seq_len`-token blocks of `pack` over the blocks' texts of `ood_split`;
    the long document is GPL-3, EOS, LGPL-3, EOS tokenized the same way (no special tokens), its first
    `long_tokens` tokens (at most 9,276 with SmolLM2); None when `long_tokens` < 2 (nothing to predict). The
    two share no document and no paragraph (see the module docstring). DataError if the blocks' texts do not
    fill one block of `seq_len` tokens (about 28K tokens with SmolLM2)."""
    if blocks < 1:
        raise DataError(f"blocks must be at least 1, got {blocks}")
    long_docs, block_docs = ood_split()
    packed = pack(block_docs, tokenizer, seq_len)[:blocks]
    if long_tokens < 2:
        return packed, None
    return packed, _stream(long_docs, tokenizer)[:, :long_tokens].clone()


def ood_long_document(tokenizer, tokens: int) -> torch.Tensor:
    """The first `tokens` tokens of all eight texts, verbatim, in the order of `NAMES`, EOS after each:
    LongTensor [1, L <= tokens] (L = 37,564 at most with SmolLM2). Its first 9,276 tokens are the long
    document of `ood_eval_data`; past them come the blocks' documents (see the module docstring)."""
    return _stream(ood_documents(), tokenizer)[:, :tokens].clone()
