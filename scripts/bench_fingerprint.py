"""Cost of the base content fingerprint at bart.large size (docs/benchmarks.md):

    .venv/bin/python scripts/bench_fingerprint.py [TMP_DIR]

Random float32 tensors with bart.large's names and shapes (406M parameters, 1.6 GB) saved as a checkpoint
in a temporary folder; times the v2 fingerprint (every byte, sha256) in memory, the sampled v1, the load
of the file, and a FingerprintIndex lookup cold (load + hash) and warm (cached by path, size, mtime, inode).
"""
import os
import sys
import tempfile
import time

import torch

from unifairseq.core import bases


def bart_large_state(d=1024, ffn=4096, layers=12, vocab=50265, positions=1026):
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g)

    sd = {"encoder.embed_tokens.weight": t(vocab, d), "encoder.embed_positions.weight": t(positions, d),
          "decoder.embed_positions.weight": t(positions, d)}
    sd["decoder.embed_tokens.weight"] = sd["encoder.embed_tokens.weight"]  # tied, as in bart.large
    for side, attns in (("encoder", ("self_attn",)), ("decoder", ("self_attn", "encoder_attn"))):
        for i in range(layers):
            p = f"{side}.layers.{i}."
            for a in attns:
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    sd[p + f"{a}.{proj}.weight"], sd[p + f"{a}.{proj}.bias"] = t(d, d), t(d)
                sd[p + f"{a}_layer_norm.weight"], sd[p + f"{a}_layer_norm.bias"] = t(d), t(d)
            sd[p + "fc1.weight"], sd[p + "fc1.bias"] = t(ffn, d), t(ffn)
            sd[p + "fc2.weight"], sd[p + "fc2.bias"] = t(d, ffn), t(d)
            sd[p + "final_layer_norm.weight"], sd[p + "final_layer_norm.bias"] = t(d), t(d)
    return sd


def timed(fn, n=3):
    best = None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best, out


def main():
    torch.set_num_threads(1)
    sd = bart_large_state()
    unique = {id(v): v for v in sd.values()}
    params = sum(v.numel() for v in unique.values())
    hashed = sum(v.numel() * v.element_size() for v in sd.values())  # tied tensors are hashed under each name
    print(f"parameters {params:,}; bytes hashed {hashed / 1e9:.2f} GB")
    s, fp = timed(lambda: bases.content_fingerprint(sd))
    print(f"v2 (every byte) in memory: {s:.2f} s = {hashed / s / 1e9:.2f} GB/s  {fp[:20]}")
    s, _ = timed(lambda: bases.content_fingerprint(sd, "v1"))
    print(f"v1 (sampled) in memory:    {s:.2f} s")
    with tempfile.TemporaryDirectory(dir=sys.argv[1] if len(sys.argv) > 1 else None) as tmp:
        path = os.path.join(tmp, "model.pt")
        torch.save({"model": sd}, path)
        del sd, unique
        size = os.path.getsize(path)
        s, _ = timed(lambda: torch.load(path, map_location="cpu", weights_only=True), n=1)
        print(f"torch.load of the {size / 1e9:.2f} GB file: {s:.2f} s")

        def file_fp(p, version=bases.CONTENT_VERSION):
            return bases.content_fingerprint(torch.load(p, map_location="cpu", weights_only=True)["model"], version)

        index = bases.FingerprintIndex(file_fp, os.path.join(tmp, "index.json"))
        s, _ = timed(lambda: index.get(path), n=1)
        print(f"index lookup, cold (load + v2): {s:.2f} s")
        s, _ = timed(lambda: index.get(path), n=3)
        print(f"index lookup, warm (cached):    {s * 1e6:.0f} µs")


if __name__ == "__main__":
    main()
