"""The delta bank's API: RoBERTa classification with per-sentence deltas and heads, the hub's
translate(sentences, deltas=...), files, add/remove, refusals, memory."""
import pytest
import torch

from bankhelp import make_bank, mixed_batch, plain_base, single, spec
from ckpthelp import save_delta_file
from tiny import perturb_deltas, tiny_model, tiny_roberta
from unifairseq.core.bank import BankError

ROBERTA_ROWS = {
    "lora_attn": ("lora_attn_roberta_base", ["--attn-bn", "4"]),
    "mam": ("mam_roberta_base", ["--attn-bn", "5", "--ffn-bn", "6", "--mid-dim", "16"]),
    "prefix_l3": ("prefix_roberta_base", ["--attn-bn", "3", "--mid-dim", "16"]),
    "prompt": ("prompt_roberta_base", ["--attn-bn", "4"]),
    "bitfit": ("bitfit_roberta_base", []),
    "dora_attn": ("dora_attn_roberta_base", ["--attn-bn", "4"]),
}


def roberta_tokens(d, bsz=6, seq=9, seed=5):
    """<s> w ... </s> with right padding, as sentence_prediction batches them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(d.nspecial, len(d) - 1, (bsz, seq), generator=g)
    x[:, 0] = d.bos()
    for b in range(bsz):
        n = seq - (b % 3)
        x[b, n - 1] = d.eos()
        x[b, n:] = d.pad()
    return x


def test_roberta_bank_logits_equal_single_delta_models():
    plain, task, _ = tiny_roberta("roberta_base")
    base = {k: v.clone() for k, v in plain.state_dict().items() if not k.startswith("classification_heads.")}
    singles, names = {}, list(ROBERTA_ROWS)
    for i, n in enumerate(names):
        arch, flags = ROBERTA_ROWS[n]
        m, _, _ = tiny_roberta(arch, flags, seed=20 + i, num_classes=2 + i % 2)  # heads of 2 and 3 classes
        sd = m.full_state_dict()
        sd.update(base)
        torch.nn.Module.load_state_dict(m, sd, strict=True)
        perturb_deltas(m, seed=i, std=0.2)
        singles[n] = m.eval()
    bank, _, _ = tiny_roberta("bank_roberta_base")
    torch.nn.Module.load_state_dict(bank, {**torch.nn.Module.state_dict(bank), **base}, strict=True)
    for n in names:
        m = singles[n]
        bank.bank.add(n, {"cfg": m.delta_plan.cfg,
                          "model": {k: v for k, v in m.full_state_dict().items() if m.delta_plan.is_trainable(k)}})
    bank.eval()
    d = task.source_dictionary
    src = roberta_tokens(d)
    ids = torch.tensor([0, 1, 2, 3, 4, 5])[torch.tensor([3, 0, 5, 2, 4, 1])]
    head = "sentence_classification_head"
    with torch.no_grad():
        logits, _ = bank(src, features_only=True, classification_head_name=head, delta_ids=ids)
        for b in range(src.size(0)):
            m = singles[names[int(ids[b])]]
            keep = int(src[b].ne(d.pad()).sum())
            ref, _ = m(src[b:b + 1, :keep], features_only=True, classification_head_name=head)
            k = ref.size(-1)
            assert float((logits[b, :k] - ref[0]).abs().max()) < 1e-5, names[int(ids[b])]
            assert torch.isinf(logits[b, k:]).all()  # a 2-class head's row is padded to the widest (3)
    # the hub: predict(head, tokens, deltas=[...]) gives each row its delta's head, as that model's own hub
    from unifairseq.fairseq.hub import DeltaRobertaHub

    hub = DeltaRobertaHub.from_model(bank, task)
    with torch.no_grad():
        got = hub.predict(head, src, deltas=[names[int(i)] for i in ids])
        for b in range(src.size(0)):
            keep = int(src[b].ne(d.pad()).sum())
            ref = DeltaRobertaHub.from_model(singles[names[int(ids[b])]], task).predict(head, src[b, :keep])
            assert float((got[b, :ref.size(-1)] - ref[0]).abs().max()) < 1e-5
            assert float(got[b].exp().sum()) == pytest.approx(1.0, abs=1e-6)  # the -inf padding has probability 0


def test_hub_translate_with_per_sentence_deltas():
    from unifairseq.fairseq.hub import DeltaBARTHub

    bank, singles = make_bank(["lora_attn", "mam", "prompt"])
    _, task = plain_base()
    words = [f"w{i}" for i in range(4, 30)]
    sentences = [" ".join(words[i:i + 4 + i % 3]) for i in range(5)]
    deltas = ["lora_attn", None, "mam", "prompt", "lora_attn"]
    hub = DeltaBARTHub(None, task, bank)
    bank.bank.default = "mam"
    out = hub.translate(sentences, deltas=deltas, beam=2)
    for s, dn, got in zip(sentences, deltas, out):
        ref = DeltaBARTHub(None, task, singles[dn or "mam"]).translate([s], beam=2)[0]
        assert got == ref, (dn, got, ref)


def test_add_remove_and_files(tmp_path):
    bank, singles = make_bank(["lora_attn", "pfeiffer"])
    before = {k: v.clone() for k, v in torch.nn.Module.state_dict(bank).items() if not k.startswith("delta_bank.")}
    storage = {k: v.data_ptr() for k, v in torch.nn.Module.state_dict(bank).items() if k in before}
    sizes = {n: bank.bank.nbytes(n) for n in bank.bank.names}
    assert bank.bank.nbytes() == sum(sizes.values())
    bank.bank.remove("lora_attn")
    assert bank.bank.names == ["pfeiffer"] and bank.bank.index("pfeiffer") == 0
    with pytest.raises(BankError, match="no delta named 'lora_attn'"):
        bank.bank.index("lora_attn")
    with pytest.raises(BankError, match="already in the bank"):
        bank.bank.add("pfeiffer", {"cfg": singles["pfeiffer"].delta_plan.cfg, "model": {}})
    with pytest.raises(BankError, match="no '.'"):
        bank.bank.add("a.b", singles["pfeiffer"].delta_plan.cfg)
    lora = singles["lora_attn"]
    bank.bank.add("lora_again", {"cfg": lora.delta_plan.cfg, "model": {
        k: v for k, v in lora.full_state_dict().items() if lora.delta_plan.is_trainable(k)}})
    after = torch.nn.Module.state_dict(bank)
    # nothing but the delta was created or read: the base tensors are the same storage, bitwise unchanged
    assert all(torch.equal(after[k], v) and after[k].data_ptr() == storage[k] for k, v in before.items())



def test_delta_files_load_refusals_and_memory(tmp_path):
    """Delta .pt files (base fingerprint recorded) load into the bank and decode as their own model;
    a delta of another base or another model family is refused with the fix; bytes add up per delta."""
    base, task = plain_base()
    bank, _ = make_bank([])
    files = {}
    for i, n in enumerate(["lora_attn", "mam", "bitfit"]):
        m, _ = single(n, seed=30 + i)
        _, _, args = tiny_model(*spec(n))
        save_delta_file(m, args, tmp_path / f"{n}.pt")
        files[n] = m
    for n in files:
        bank.bank.add(n, str(tmp_path / f"{n}.pt"))
    bank.eval()
    d, src, lens, prev, _, _ = mixed_batch(3)
    ids = torch.tensor([2, 0, 1])
    with torch.no_grad():
        out, _ = bank(src, lens, prev, delta_ids=ids)
        for b in range(3):
            keep = int(lens[b])
            ref, _ = files[bank.bank.names[int(ids[b])]](src[b:b + 1, -keep:], lens[b:b + 1], prev[b:b + 1])
            assert float((out[b] - ref[0]).abs().max()) < 1e-5
    # bytes: each delta exactly its own trained tensors (what its delta checkpoint stores)
    for n, m in files.items():
        own = sum(p.numel() * p.element_size() for k, p in m.full_state_dict().items() if m.delta_plan.is_trainable(k))
        assert bank.bank.nbytes(n) == own, n
    # another base: the same method trained on a differently initialised base
    other, _, args = tiny_model("lora_attn_bart_base", ["--attn-bn", "5"], seed=99)
    save_delta_file(other, args, tmp_path / "other.pt")
    with pytest.raises(BankError, match="was trained on another base.*allow_base_mismatch"):
        bank.bank.add("other", str(tmp_path / "other.pt"))
    assert "other" not in bank.bank.names
    # another dictionary: the task's dictionaries are not those the delta file records
    from unifairseq.fairseq.checkpoint_io import DeltaCheckpointError

    assert files["mam"].dictionary_fingerprints and bank.dictionary_fingerprints == files["mam"].dictionary_fingerprints
    bank.dictionary_fingerprints = {side: "0" * 64 for side in bank.dictionary_fingerprints}
    with pytest.raises(DeltaCheckpointError, match="the task's source dictionary .* is not the one the delta was "
                                                   "trained with"):
        bank.bank.add("mam2", str(tmp_path / "mam.pt"))
    assert "mam2" not in bank.bank.names
    # another family: a RoBERTa delta (no fingerprint: the tensors themselves do not fit)
    rob, _, _ = tiny_roberta("lora_attn_roberta_base", ["--attn-bn", "4"])
    state = {"cfg": rob.delta_plan.cfg, "model": {k: v for k, v in rob.full_state_dict().items()
                                                 if rob.delta_plan.is_trainable(k)}}
    with pytest.raises(BankError, match="carries classification heads.*onto a bank_roberta model"):
        bank.bank.add("rob", state)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("classification_heads.")}
    with pytest.raises(BankError, match="does not fit this bank's model.*bank of the model it was trained on"):
        bank.bank.add("rob", state)
    # ids: several deltas and none given; out of range
    with pytest.raises(BankError, match="no delta_ids were given"):
        bank(src, lens, prev)
    with pytest.raises(BankError, match=r"bank indices 0\.\.2"):
        bank(src, lens, prev, delta_ids=torch.tensor([0, 3, 1]))
    bank.bank.default = "mam"  # now sentences without ids take the default delta
    with torch.no_grad():
        out, _ = bank(src[:1], lens[:1], prev[:1])
        ref, _ = files["mam"](src[:1], lens[:1], prev[:1])
    assert float((out - ref).abs().max()) < 1e-5


def test_load_bank_from_base_file_and_bank_checkpoints(tmp_path):
    """load_bank(base.pt, {name: delta.pt}) reads the base once; a bank checkpoint holds only the deltas
    and the base's path, and a model built from the same --bank-deltas loads it back (base first)."""
    from fairseq.checkpoint_utils import torch_persistent_save

    from unifairseq.fairseq.bank import load_bank
    from unifairseq.tools.tiny_base import checkpoint_state

    base, task = plain_base()
    plain, _, pargs = tiny_model("bart_base")
    plain.load_state_dict(base)
    torch_persistent_save(checkpoint_state(plain, pargs), str(tmp_path / "base.pt"))
    files = {}
    for i, n in enumerate(["lora_attn", "mam", "bitfit"]):  # BitFit: biases that start from the base
        m, _ = single(n, seed=40 + i)
        _, _, args = tiny_model(*spec(n))
        save_delta_file(m, args, tmp_path / f"{n}.pt")
        files[n] = m
    bank = load_bank(str(tmp_path / "base.pt"), {n: str(tmp_path / f"{n}.pt") for n in files}, task=task,
                     default="mam").eval()
    d, src, lens, prev, _, _ = mixed_batch(3)
    ids = torch.tensor([1, 0, 2])

    def check(model):
        with torch.no_grad():
            out, _ = model(src, lens, prev, delta_ids=ids)
            for b in range(3):
                keep = int(lens[b])
                ref, _ = files[model.bank.names[int(ids[b])]](src[b:b + 1, -keep:], lens[b:b + 1], prev[b:b + 1])
                assert float((out[b] - ref[0]).abs().max()) < 1e-5

    check(bank)
    ckpt = bank.state_dict()
    assert all(k.startswith("delta_bank.") or k.startswith("unifairseq_meta.") for k in ckpt)
    fresh, _, _ = tiny_model("bank_bart_base", ["--bank-deltas", "lora_attn=lora_attn:attn_bn=5,"
                                                "mam=mam:attn_bn=5:ffn_bn=6:mid_dim=16,bitfit=bitfit"], seed=7)
    fresh.load_state_dict(ckpt)  # loads base.pt from the recorded path, then the deltas (BitFit's trained biases)
    check(fresh.eval())


def test_stack_cache_off_gives_the_same_numbers_and_keeps_no_copies():
    bank, _ = make_bank(["lora_attn", "dora_attn", "pfeiffer", "houlsby"])
    d, src, lens, prev, _, _ = mixed_batch()
    ids = torch.tensor([0, 1, 2, 3, 1])
    with torch.no_grad():
        cached, _ = bank(src, lens, prev, delta_ids=ids)
        assert bank.bank.cache_bytes() > 0
        bank.bank.stack_cache = False
        plain, _ = bank(src, lens, prev, delta_ids=ids)
    assert bank.bank.cache_bytes() == 0
    assert torch.equal(cached, plain)


def test_stacked_parameters_see_fairseqs_optimizer_steps():
    """A bank trained with fairseq and validated between updates: the stacks cached at one validation
    are not reused at the next, although fairseq's Adam (it writes through `p.data`) leaves the version
    counters as they were."""
    from fairseq.optim.adam import Adam

    bank, _ = make_bank(["lora_attn", "lora_attn@2", "pfeiffer", "pfeiffer@2"])  # twins: stacked groups
    d, src, lens, prev, _, _ = mixed_batch()
    ids = torch.tensor([0, 1, 2, 3, 1])
    with torch.no_grad():
        first, _ = bank(src, lens, prev, delta_ids=ids)  # validation 1: stacks cached
    bank.train()
    params = [p for n, p in bank.named_parameters() if n.startswith("delta_bank.")]
    for p in params:
        p.grad = torch.ones_like(p)
    Adam(params, lr=0.05).step()
    bank.eval()
    with torch.no_grad():
        again, _ = bank(src, lens, prev, delta_ids=ids)  # validation 2
        bank.bank.stack_cache = False
        fresh, _ = bank(src, lens, prev, delta_ids=ids)
    assert not torch.allclose(again, first)
    assert torch.equal(again, fresh)


def test_mbart_bank_equals_single_delta_models():
    """Pre-LN mBART (parallel adapters read the residual stream): a mixed batch = each delta alone."""
    from unifairseq.core.modules import is_delta_name

    rows = {"mam": "mam", "scaled_pa": "scaled_pa", "lora_attn": "lora_attn", "pfeiffer": "pfeiffer"}
    small = ["--attn-bn", "5", "--ffn-bn", "6", "--mid-dim", "16"]
    first, _, _ = tiny_model("mam_mbart_large", small)
    base = {k: v.clone() for k, v in first.full_state_dict().items() if not is_delta_name(k)}
    singles = {}
    for i, n in enumerate(rows):
        m, _, _ = tiny_model(f"{n}_mbart_large", small, seed=50 + i)
        torch.nn.Module.load_state_dict(m, {**m.full_state_dict(), **base}, strict=True)
        perturb_deltas(m, seed=i, std=0.2)
        singles[n] = m.eval()
    bank, _, _ = tiny_model("bank_mbart_large")
    torch.nn.Module.load_state_dict(bank, {**torch.nn.Module.state_dict(bank), **base}, strict=True)
    for n, m in singles.items():
        bank.bank.add(n, {"cfg": m.delta_plan.cfg,
                          "model": {k: v for k, v in m.full_state_dict().items() if m.delta_plan.is_trainable(k)}})
    bank.eval()
    d, src, lens, prev, _, _ = mixed_batch()
    ids = torch.tensor([2, 0, 1, 3, 1])
    with torch.no_grad():
        out, _ = bank(src, lens, prev, delta_ids=ids)
        for b in range(src.size(0)):
            keep = int(lens[b])
            ref, _ = singles[bank.bank.names[int(ids[b])]](src[b:b + 1, -keep:], lens[b:b + 1], prev[b:b + 1])
            assert float((out[b] - ref[0]).abs().max()) < 1e-5, bank.bank.names[int(ids[b])]


def test_fresh_deltas_start_from_the_base_loaded_under_them():
    """--bank-deltas presets are built before fairseq loads the base (--finetune-from-model): BitFit's
    biases and DoRA's magnitude must start from that base, as a single-delta model's do."""
    base, _ = plain_base()
    g = torch.Generator().manual_seed(1)  # a "pretrained" base: biases are not fairseq's zero init
    base = {k: v + 0.1 * torch.randn(v.shape, generator=g) if k.endswith("bias") else v for k, v in base.items()}
    bank, _, _ = tiny_model("bank_bart_base", ["--bank-deltas", "bf=bitfit,dr=dora_attn:attn_bn=4"], seed=3)
    bank.load_state_dict(dict(base))  # a full (base) checkpoint, as fairseq loads it
    ds = bank.delta_bank
    for name, t in base.items():
        if name.endswith("bias"):
            assert torch.equal(dict(ds["bf"].named_parameters())[name], t), name
    single, _, _ = tiny_model("dora_attn_bart_base", ["--attn-bn", "4"], seed=3)
    torch.nn.Module.load_state_dict(single, {**single.full_state_dict(), **base}, strict=True)
    from unifairseq.core.modules import init_deltas_from_base
    init_deltas_from_base(single)
    key = "encoder.layers.0.self_attn.q_proj.delta_dora.m"
    assert torch.allclose(dict(ds["dr"].named_parameters())[key], dict(single.named_parameters())[key], atol=1e-6)
    assert not torch.allclose(dict(ds["dr"].named_parameters())[key], torch.ones(32))


# ------------------------------------------------------------ one model for one or many deltas
from methods import IDS, METHODS  # noqa: E402


@pytest.mark.parametrize("name,arch,flags,identity", METHODS, ids=IDS)
def test_single_delta_model_serves_its_delta_mixed_with_others(name, arch, flags, identity, tmp_path):
    """A single-delta model of every method-table row takes more deltas (serve_with_others): a mixed
    batch (its own delta, two others, the plain base) equals each sentence on its own model; the own
    delta keeps its parameters and state-dict keys. BitFit, which trained the base's biases in place, hands
    them to per-delta bias rows and gets the base file's back (refused in one line when no base file is known)."""
    from fairseq.checkpoint_utils import torch_persistent_save

    from unifairseq.fairseq.own_delta import serve_with_others
    from unifairseq.tools.tiny_base import checkpoint_state

    own, _ = single(name, seed=3)
    others = {"pf": single("pfeiffer", seed=4), "mam": single("mam", seed=5)}
    keys = list(own.state_dict().keys())
    if name == "bitfit":
        with pytest.raises(BankError, match="trains the base's own biases in place.*--delta-base"):
            serve_with_others(own, "own", {})
        plain, _, pargs = tiny_model("bart_base")
        torch.nn.Module.load_state_dict(plain, plain_base()[0], strict=True)
        torch_persistent_save(checkpoint_state(plain, pargs), str(tmp_path / "base.pt"))
        own.base_path = str(tmp_path / "base.pt")
    bank = serve_with_others(own, "own", {n: s[1] for n, s in others.items()})
    assert bank.names == ["own", "pf", "mam"] and bank.default == "own"
    d, src, lens, prev, _, _ = mixed_batch(pattern="one_each")
    ids = torch.tensor([0, 1, 2, -1, 0])
    with torch.no_grad():
        out, _ = own(src, lens, prev, delta_ids=ids)
        plain = tiny_model("bart_base")[0]
        torch.nn.Module.load_state_dict(plain, plain_base()[0], strict=True)
        refs = {0: own, 1: others["pf"][0], 2: others["mam"][0], -1: plain.eval()}
        for b in range(src.size(0)):
            keep = int(lens[b])
            m = refs[int(ids[b])]
            if m is own:  # its own delta alone: the same model without the bank's ids
                with bank.using(torch.zeros(1, dtype=torch.long)):
                    ref, _ = m(src[b:b + 1, -keep:], lens[b:b + 1], prev[b:b + 1], delta_ids=torch.zeros(1).long())
                alone, _ = single(name, seed=3)
                ref2, _ = alone(src[b:b + 1, -keep:], lens[b:b + 1], prev[b:b + 1])
                assert float((ref - ref2).abs().max()) < 1e-5
            else:
                ref, _ = m(src[b:b + 1, -keep:], lens[b:b + 1], prev[b:b + 1])
            assert float((out[b] - ref[0]).abs().max()) < 1e-5, (name, b)
    assert [k for k in own.state_dict().keys() if not k.startswith("delta_bank.")] == keys


def test_a_merged_own_delta_is_refused():
    from unifairseq.fairseq.own_delta import serve_with_others

    own, _ = single("lora_attn", seed=3)
    for m in own.modules():
        if hasattr(m, "merge") and getattr(m, "delta", None) is not None:
            m.merge()
    with pytest.raises(BankError, match="merged into its weights"):
        serve_with_others(own, "own", {})
