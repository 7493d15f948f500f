"""Tokenize text with a Hugging Face model's own tokenizer files, in the fairseq dictionary that
`unifairseq-import-hf` wrote for it.

    unifairseq-hf-tokenize HF_DIR [--dict OUT_DIR/dict.txt] < train.raw > train.tok
    fairseq-preprocess --only-source --srcdict OUT_DIR/dict.txt --trainpref train.tok --destdir DATA_BIN

Each input line becomes one output line of space-separated fairseq dictionary symbols (`--ids`:
fairseq dictionary ids instead). Tokenization is the checkpoint's own, run by the `tokenizers`
library from HF_DIR/tokenizer.json (or vocab.txt through `tokenizers.BertWordPieceTokenizer`, or
vocab.json + merges.txt through `tokenizers.ByteLevelBPETokenizer`); nothing is tokenized by hand.
Padding and truncation configured in tokenizer.json are switched off.

By default no special tokens are written, since fairseq adds them itself: fairseq-preprocess
appends `</s>` to every line, and RoBERTa's `sentence_prediction` task prepends `<s>`
(`--init-token 0`). `--add-special-tokens` writes them as the HF tokenizer would
(`[CLS] ... [SEP]` becomes `<s> ... </s>`), which is what to feed the converted model directly.

The vocabulary mapping (`build_vocab_map`) is the one the importer uses, so the two agree:
    fairseq index 0..3 = <s> <pad> </s> <unk>, taken from the HF tokens playing those roles
                         (BERT: [CLS] [PAD] [SEP] [UNK]; RoBERTa/BART/mBART: the same four symbols);
    then every other HF id in increasing order, so HF order is kept.
The HF mask token is named `<mask>` (the symbol fairseq's masked_lm / denoising /
sentence_prediction tasks add), mBART language codes `xx_YY` are named `[xx_YY]` (the symbols
fairseq's translation_from_pretrained_bart / multilingual_denoising add for --langs), and a
token that cannot stand in a dict.txt line (empty, holding whitespace, or a duplicate after the
renaming) is named `hf_token_<id>`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence
from unifairseq import cli
from unifairseq.errors import UnifairseqError

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MASK_SYMBOL = "<mask>"
LANG_CODE = re.compile(r"^[a-z]{2,3}_[A-Z]{2}$")
_WHITESPACE = re.compile(r"\s")  # fairseq's tokenize_line splits on \s+

# (role, tokenizer_config keys in priority order, config.json id key, well-known spellings)
_ROLES = (
    ("<s>", ("cls_token", "bos_token"), "bos_token_id", ("[CLS]", "<s>", "<cls>")),
    ("<pad>", ("pad_token",), "pad_token_id", ("[PAD]", "<pad>")),
    ("</s>", ("sep_token", "eos_token"), "eos_token_id", ("[SEP]", "</s>", "<sep>")),
    ("<unk>", ("unk_token",), "unk_token_id", ("[UNK]", "<unk>")),
)


class HFVocabError(UnifairseqError, ValueError):
    """The HF folder's tokenizer files are missing or cannot be mapped to a fairseq dictionary."""


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _token_text(value) -> Optional[str]:
    """tokenizer_config values are a string or an AddedToken dict ({"content": ...})."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def load_tokenizer(hf_dir: str):
    """The checkpoint's own tokenizer, run by the `tokenizers` library, without padding/truncation."""
    import tokenizers

    tok_cfg = _read_json(os.path.join(hf_dir, "tokenizer_config.json"))
    tokenizer_json = os.path.join(hf_dir, "tokenizer.json")
    vocab_txt = os.path.join(hf_dir, "vocab.txt")
    vocab_json = os.path.join(hf_dir, "vocab.json")
    merges_txt = os.path.join(hf_dir, "merges.txt")
    if os.path.isfile(tokenizer_json):
        tok = tokenizers.Tokenizer.from_file(tokenizer_json)
    elif os.path.isfile(vocab_txt):
        lower = tok_cfg.get("do_lower_case", True)
        tok = tokenizers.BertWordPieceTokenizer(
            vocab_txt, lowercase=lower, strip_accents=tok_cfg.get("strip_accents"),
            handle_chinese_chars=tok_cfg.get("tokenize_chinese_chars", True),
            unk_token=_token_text(tok_cfg.get("unk_token")) or "[UNK]",
            sep_token=_token_text(tok_cfg.get("sep_token")) or "[SEP]",
            cls_token=_token_text(tok_cfg.get("cls_token")) or "[CLS]",
            pad_token=_token_text(tok_cfg.get("pad_token")) or "[PAD]",
            mask_token=_token_text(tok_cfg.get("mask_token")) or "[MASK]")
    elif os.path.isfile(vocab_json) and os.path.isfile(merges_txt):
        from tokenizers.processors import RobertaProcessing

        tok = tokenizers.ByteLevelBPETokenizer(vocab_json, merges_txt,
                                               add_prefix_space=bool(tok_cfg.get("add_prefix_space", False)))
        bos = _token_text(tok_cfg.get("cls_token") or tok_cfg.get("bos_token")) or "<s>"
        eos = _token_text(tok_cfg.get("sep_token") or tok_cfg.get("eos_token")) or "</s>"
        if tok.token_to_id(bos) is not None and tok.token_to_id(eos) is not None:
            tok.post_processor = RobertaProcessing((eos, tok.token_to_id(eos)), (bos, tok.token_to_id(bos)))
    else:
        raise HFVocabError(f"no tokenizer files in {hf_dir!r}: expected tokenizer.json, vocab.txt (WordPiece) "
                           "or vocab.json + merges.txt (byte-level BPE)")
    tok.no_padding()
    tok.no_truncation()
    return tok


@dataclass
class VocabMap:
    """fairseq dictionary order for an HF vocabulary."""

    symbols: List[str]                 # fairseq symbols, index = fairseq id (the 4 specials first)
    hf_ids: List[Optional[int]]        # HF id (embedding row) of each fairseq id; None = no HF row
    hf_to_fairseq: Dict[int, int]      # HF id -> fairseq id
    renamed: Dict[int, str] = field(default_factory=dict)  # HF id -> symbol, where it differs from the HF token

    def __len__(self) -> int:
        return len(self.symbols)

    def map_ids(self, hf_ids: Iterable[int]) -> List[int]:
        try:
            return [self.hf_to_fairseq[int(i)] for i in hf_ids]
        except KeyError as e:
            raise HFVocabError(f"HF id {e.args[0]} is not in the vocabulary mapping") from None

    def dict_lines(self) -> List[str]:
        """dict.txt in fairseq's `token count` format (the 4 specials are implicit)."""
        return [f"{s} 1" for s in self.symbols[len(FAIRSEQ_SPECIALS):]]


def _configured_token(key: str, tok_cfg: dict, special_map: dict) -> Optional[str]:
    return _token_text(tok_cfg.get(key)) or _token_text(special_map.get(key))


def _role_ids(vocab: Dict[str, int], tok_cfg: dict, special_map: dict, hf_cfg: dict) -> Dict[str, int]:
    roles = {}
    for role, keys, cfg_key, names in _ROLES:
        hf_id = None
        for key in keys:
            text = _configured_token(key, tok_cfg, special_map)
            if text is not None and text in vocab:
                hf_id = vocab[text]
                break
        if hf_id is None and isinstance(hf_cfg.get(cfg_key), int) and hf_cfg[cfg_key] in vocab.values():
            hf_id = hf_cfg[cfg_key]
        if hf_id is None:
            hf_id = next((vocab[n] for n in names if n in vocab), None)
        if hf_id is None:
            raise HFVocabError(f"cannot tell which HF token plays fairseq's {role}: none of "
                               f"{', '.join(keys)} in tokenizer_config.json, nor {', '.join(names)} in the vocabulary")
        roles[role] = hf_id
    if len(set(roles.values())) != len(roles):
        raise HFVocabError(f"fairseq's <s>, <pad>, </s>, <unk> must be distinct HF tokens; got HF ids {roles}")
    return roles


def _mask_id(vocab: Dict[str, int], tok_cfg: dict, special_map: dict) -> Optional[int]:
    text = _configured_token("mask_token", tok_cfg, special_map)
    if text is not None and text in vocab:
        return vocab[text]
    return next((vocab[n] for n in ("<mask>", "[MASK]") if n in vocab), None)


def _special_added_tokens(hf_dir: str) -> set:
    data = _read_json(os.path.join(hf_dir, "tokenizer.json"))
    specials = {t["content"] for t in data.get("added_tokens", []) if t.get("special")}
    tok_cfg = _read_json(os.path.join(hf_dir, "tokenizer_config.json"))
    for t in tok_cfg.get("additional_special_tokens", []) or []:
        if _token_text(t):
            specials.add(_token_text(t))
    for t in (tok_cfg.get("added_tokens_decoder") or {}).values():
        if isinstance(t, dict) and t.get("special") and _token_text(t):
            specials.add(_token_text(t))
    return specials


def build_vocab_map(hf_dir: str, num_rows: Optional[int] = None, tokenizer=None) -> VocabMap:
    """The fairseq dictionary for HF_DIR's tokenizer. `num_rows`: rows of the HF embedding matrix
    (config.json's vocab_size by default); ids the tokenizer does not use become `madeupwordNNNN`
    (fairseq's own name for padding symbols)."""
    hf_cfg = _read_json(os.path.join(hf_dir, "config.json"))
    tok_cfg = _read_json(os.path.join(hf_dir, "tokenizer_config.json"))
    special_map = _read_json(os.path.join(hf_dir, "special_tokens_map.json"))
    tok = tokenizer if tokenizer is not None else load_tokenizer(hf_dir)
    vocab = tok.get_vocab(with_added_tokens=True)
    n_tok = max(vocab.values()) + 1 if vocab else 0
    rows = num_rows if num_rows is not None else int(hf_cfg.get("vocab_size") or n_tok)
    if n_tok > rows:
        raise HFVocabError(f"the tokenizer in {hf_dir!r} has ids up to {n_tok - 1}, beyond the {rows} rows of the "
                           "model's embedding matrix (config.json vocab_size)")
    roles = _role_ids(vocab, tok_cfg, special_map, hf_cfg)
    mask_id = _mask_id(vocab, tok_cfg, special_map)
    bracket_langs = hf_cfg.get("model_type") == "mbart"
    specials = _special_added_tokens(hf_dir) if bracket_langs else set()

    symbols = list(FAIRSEQ_SPECIALS)
    hf_ids: List[Optional[int]] = [roles[s] for s in FAIRSEQ_SPECIALS]
    used = set(symbols)
    renamed: Dict[int, str] = {}
    for s, i in zip(FAIRSEQ_SPECIALS, hf_ids):
        if tok.id_to_token(i) != s:
            renamed[i] = s
    role_set = set(roles.values())
    madeup = 0
    for i in range(rows):
        if i in role_set:
            continue
        token = tok.id_to_token(i) if i < n_tok else None
        if token is None:
            sym = f"madeupword{madeup:04d}"
            madeup += 1
        elif i == mask_id:
            sym = MASK_SYMBOL
        elif bracket_langs and token in specials and LANG_CODE.match(token):
            sym = f"[{token}]"
        else:
            sym = token
        if not sym or _WHITESPACE.search(sym) or sym in used:
            sym = f"hf_token_{i}"
            while sym in used:
                sym += "_"
        if token is not None and sym != token:
            renamed[i] = sym
        used.add(sym)
        symbols.append(sym)
        hf_ids.append(i)  # an id the tokenizer never emits still has its embedding row
    if MASK_SYMBOL not in used:  # fairseq's tasks add <mask>; give it a row now (zero-initialised)
        symbols.append(MASK_SYMBOL)
        hf_ids.append(None)
    hf_to_fairseq = {i: k for k, i in enumerate(hf_ids) if i is not None}
    return VocabMap(symbols, hf_ids, hf_to_fairseq, renamed)


class HFTokenizer:
    """HF_DIR's tokenizer with output in fairseq dictionary ids/symbols.

    >>> tok = HFTokenizer(hf_dir, dict_path=os.path.join(out_dir, "dict.txt"))
    >>> tok.encode("Hello world")          # fairseq ids, with <s> ... </s>, for the converted model
    >>> tok.encode_symbols("Hello world")  # symbols for fairseq-preprocess (no special tokens)
    """

    def __init__(self, hf_dir: str, dict_path: Optional[str] = None):
        self.hf_dir = hf_dir
        self.tokenizer = load_tokenizer(hf_dir)
        self.vocab = build_vocab_map(hf_dir, tokenizer=self.tokenizer)
        if dict_path is not None:
            check_dictionary(self.vocab, dict_path)

    def encode_hf(self, texts: Sequence[str], add_special_tokens: bool = True) -> List[List[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        return self.encode_batch([text], add_special_tokens)[0]

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> List[List[int]]:
        return [self.vocab.map_ids(ids) for ids in self.encode_hf(texts, add_special_tokens)]

    def encode_symbols(self, text: str, add_special_tokens: bool = False) -> List[str]:
        return [self.vocab.symbols[i] for i in self.encode(text, add_special_tokens)]

    def encode_lines(self, lines: Sequence[str], ids: bool = False, add_special_tokens: bool = False) -> List[str]:
        out = []
        for seq in self.encode_batch([ln.rstrip("\r\n") for ln in lines], add_special_tokens):
            out.append(" ".join(str(i) if ids else self.vocab.symbols[i] for i in seq))
        return out


def check_dictionary(vocab: VocabMap, dict_path: str) -> None:
    """The dict.txt the importer wrote must list exactly this mapping's symbols, in order."""
    from fairseq.data import Dictionary

    d = Dictionary.load(dict_path)
    if d.symbols != vocab.symbols:
        first = next((k for k, (a, b) in enumerate(zip(d.symbols, vocab.symbols)) if a != b),
                     min(len(d.symbols), len(vocab.symbols)))
        raise HFVocabError(f"{dict_path} does not match the tokenizer: {len(d)} symbols vs {len(vocab)} mapped, first "
                           f"difference at index {first}; was it written by unifairseq-import-hf from this folder?")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = cli.parser("unifairseq-hf-tokenize", __doc__)
    ap.add_argument("hf_dir", metavar="HF_DIR", help="the Hugging Face model folder that was imported")
    ap.add_argument("--dict", dest="dict_path", default=None,
                    help="OUT_DIR/dict.txt written by unifairseq-import-hf: checked against the tokenizer")
    ap.add_argument("--ids", action="store_true", help="write fairseq dictionary ids instead of symbols")
    ap.add_argument("--add-special-tokens", action="store_true",
                    help="add the tokenizer's special tokens (e.g. <s> ... </s>); off by default because "
                         "fairseq-preprocess appends </s> and the tasks add <s>")
    ap.add_argument("--input", default="-", help="text file, one example a line (default: stdin)")
    ap.add_argument("--output", default="-", help="output file (default: stdout)")
    ap.add_argument("--batch-lines", type=int, default=1000, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    try:
        tok = HFTokenizer(a.hf_dir, a.dict_path)
    except (HFVocabError, OSError, json.JSONDecodeError) as e:
        return cli.error("unifairseq-hf-tokenize", e)
    fin = sys.stdin if a.input == "-" else open(a.input, encoding="utf-8")
    fout = sys.stdout if a.output == "-" else open(a.output, "w", encoding="utf-8")
    try:
        batch: List[str] = []
        for line in fin:
            batch.append(line)
            if len(batch) >= a.batch_lines:
                fout.write("".join(s + "\n" for s in tok.encode_lines(batch, a.ids, a.add_special_tokens)))
                batch = []
        if batch:
            fout.write("".join(s + "\n" for s in tok.encode_lines(batch, a.ids, a.add_special_tokens)))
    finally:
        if fin is not sys.stdin:
            fin.close()
        if fout is not sys.stdout:
            fout.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
