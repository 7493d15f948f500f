"""The fairseq-free core (torch only): what every delta method is, independent of any model code.

  methods/        the registry and one module per method (its sites, parameters, Δh, count, export)
  config.py       DeltaConfig: the flags, validated once (modes and options come from the registry)
  plan.py         DeltaPlan: which method at which site with which sizes, built once per model
  presets.py      the one list of named methods (MAM = prefix ∪ scaled PA)
  modules.py      shared building blocks: Bottleneck, Composition, DeltaLinear/LinearDelta
  heads.py        head-level attention math: concat / gated / add / ReLU prefixes, the fused kernel
  accounting.py   freezing and parameter counts, read from the plan
  bank.py         the delta bank: N deltas, a delta per sample (DeltaSet, Bank); bank_group.py its
                  same-structure groups under vmap; bank_sites.py what each delta-layer site computes
                  for a mixed batch
  bases.py, deltafile.py, deltaschema.py   bases found by name; the shareable delta folder and its schema
  tmpfiles.py, fileperm.py                 atomic writes: leftovers of killed writes, the user's umask
"""
