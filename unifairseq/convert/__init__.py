"""Hugging Face -> fairseq conversion.

    hf_read        reading a local Hugging Face model folder: config.json, the weights, HFImportError
    hf_to_fairseq  the name/shape plans and state-dict mapping for BERT/RoBERTa and BART/mBART
    hf_import      convert() and the unifairseq-import-hf command line: model.pt + dict.txt
    hf_tokenize    the vocabulary map and the unifairseq-hf-tokenize command line
    fairseq_to_hf  the other direction: fairseq BART/mBART/RoBERTa -> transformers (unifairseq-export hf)
"""
